//! A container's (or an exec's) stdin and output, with the agent protocol's rules for them kept
//! here, once:
//! - a container's stdin is one WriteStdin stream whose first chunk names the container (and
//!   asks for stdin to close at the stream's end); the end closes it;
//! - an exec's stdin is `stdin` messages on its input stream, `close_stdin` closes it;
//! - output is Attach's chunks (stdout or stderr) or Exec's (stdout, stderr, then one exit),
//!   copied by [`Output::copy_to`] (stderr to stdout's writer when there is no other).

use std::pin::Pin;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use vpod_agent_api::pb::{
    exec_input, exec_output, ExecInput, ExecOutput, ExitStatus, OutputChunk, OutputStream,
    StdinChunk,
};

use super::error::{ContainerOp, PodError};

/// The WriteStdin stream of container `id` for `data`: the first chunk names the container and
/// asks the agent to close its stdin when the stream ends; the data follows.
pub(crate) fn stdin_chunks(
    id: String,
    data: impl Stream<Item = Vec<u8>> + Send + 'static,
) -> impl Stream<Item = StdinChunk> + Send + 'static {
    let first = StdinChunk {
        id,
        data: Vec::new(),
        close_on_end: true,
    };
    tokio_stream::once(first).chain(data.map(|data| StdinChunk {
        id: String::new(),
        data,
        close_on_end: false,
    }))
}

/// Where a [`Stdin`]'s bytes go.
#[derive(Debug)]
enum Sink {
    /// A container's WriteStdin call (see [`stdin_chunks`]): dropping the sender ends it.
    Container {
        data: mpsc::Sender<Vec<u8>>,
        call: Option<JoinHandle<Result<u64, PodError>>>,
    },
    /// An exec's input stream.
    Exec(mpsc::Sender<ExecInput>),
}

/// A container's or an exec's stdin. Bytes written reach the process in order; [`Stdin::close`]
/// (or dropping a container's `Stdin`) gives it EOF. A container's stdin exists once the
/// container is started (and was created with stdin).
#[derive(Debug)]
pub struct Stdin {
    sink: Sink,
    pod: String,
    container: String,
}

impl Stdin {
    /// A container's stdin over the WriteStdin `call` fed from `data`'s receiver.
    pub(crate) fn container(
        pod: &str,
        container: &str,
        data: mpsc::Sender<Vec<u8>>,
        call: Option<JoinHandle<Result<u64, PodError>>>,
    ) -> Stdin {
        Stdin {
            sink: Sink::Container { data, call },
            pod: pod.into(),
            container: container.into(),
        }
    }

    /// An exec's stdin on its input stream.
    pub(crate) fn exec(pod: &str, container: &str, input: mpsc::Sender<ExecInput>) -> Stdin {
        Stdin {
            sink: Sink::Exec(input),
            pod: pod.into(),
            container: container.into(),
        }
    }

    fn op(&self) -> ContainerOp {
        match self.sink {
            Sink::Container { .. } => ContainerOp::WriteStdin,
            Sink::Exec(_) => ContainerOp::Exec,
        }
    }

    fn ended(&self) -> PodError {
        PodError::Ended {
            id: self.pod.clone(),
            container: self.container.clone(),
            op: self.op(),
        }
    }

    /// Why a container's stdin call ended early: its own error, else "ended".
    async fn call_error(&mut self) -> PodError {
        if let Sink::Container { call, .. } = &mut self.sink {
            if let Some(Ok(Err(e))) = match call.take() {
                Some(c) => Some(c.await),
                None => None,
            } {
                return e;
            }
        }
        self.ended()
    }

    /// Sends `data`; fails once the process's stdin is gone.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), PodError> {
        let sent = match &self.sink {
            Sink::Container { data: tx, .. } => tx.send(data).await.is_ok(),
            Sink::Exec(tx) => tx.send(exec_stdin(data)).await.is_ok(),
        };
        if sent {
            Ok(())
        } else {
            Err(self.call_error().await)
        }
    }

    /// [`Stdin::write`] from a thread outside the async runtime (one reading a blocking file).
    pub fn blocking_write(&mut self, data: Vec<u8>) -> Result<(), PodError> {
        let sent = match &self.sink {
            Sink::Container { data: tx, .. } => tx.blocking_send(data).is_ok(),
            Sink::Exec(tx) => tx.blocking_send(exec_stdin(data)).is_ok(),
        };
        sent.then_some(()).ok_or_else(|| self.ended())
    }

    /// Closes the process's stdin (EOF) and, for a container's, waits for the agent's answer.
    pub async fn close(self) -> Result<(), PodError> {
        match self.sink {
            Sink::Container { data, call } => {
                drop(data);
                match call {
                    Some(c) => c.await.map_or(Ok(()), |r| r.map(drop)),
                    None => Ok(()),
                }
            }
            Sink::Exec(ref tx) => tx.send(exec_close_stdin()).await.map_err(|_| self.ended()),
        }
    }

    /// [`Stdin::close`] from a thread outside the async runtime; does not wait for the agent.
    pub fn blocking_close(self) -> Result<(), PodError> {
        match self.sink {
            Sink::Container { .. } => Ok(()),
            Sink::Exec(ref tx) => tx
                .blocking_send(exec_close_stdin())
                .map_err(|_| self.ended()),
        }
    }
}

fn exec_stdin(data: Vec<u8>) -> ExecInput {
    ExecInput {
        input: Some(exec_input::Input::Stdin(data)),
    }
}

fn exec_close_stdin() -> ExecInput {
    ExecInput {
        input: Some(exec_input::Input::CloseStdin(true)),
    }
}

/// One piece of a container's or an exec's output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    /// Bytes the process wrote to stdout (or to its TTY).
    Stdout(Vec<u8>),
    /// Bytes the process wrote to stderr.
    Stderr(Vec<u8>),
    /// An exec's process ended: the last event of its output.
    Exit(ExitStatus),
}

type Events = Pin<Box<dyn Stream<Item = Result<OutputEvent, tonic::Status>> + Send>>;

/// A container's output ([`Attach`](ContainerOp::Attach)) or an exec's, as the agent streams it.
pub struct Output {
    events: Events,
    pod: String,
    container: String,
    op: ContainerOp,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("pod", &self.pod)
            .field("container", &self.container)
            .field("op", &self.op)
            .finish_non_exhaustive()
    }
}

impl Output {
    /// Output of `events` for `op` on `container`.
    pub(crate) fn new(
        pod: &str,
        container: &str,
        op: ContainerOp,
        events: impl Stream<Item = Result<OutputEvent, tonic::Status>> + Send + 'static,
    ) -> Output {
        Output {
            events: Box::pin(events),
            pod: pod.into(),
            container: container.into(),
            op,
        }
    }

    /// A container's Attach stream.
    pub(crate) fn attach(
        pod: &str,
        container: &str,
        chunks: tonic::Streaming<OutputChunk>,
    ) -> Output {
        let events = chunks.map(|c| {
            c.map(|c| match c.stream() {
                OutputStream::Stderr => OutputEvent::Stderr(c.data),
                OutputStream::Stdout => OutputEvent::Stdout(c.data),
            })
        });
        Output::new(pod, container, ContainerOp::Attach, events)
    }

    /// An exec's output stream. A message without output carries nothing: skipped.
    pub(crate) fn exec(pod: &str, container: &str, out: tonic::Streaming<ExecOutput>) -> Output {
        let events = out.filter_map(|m| match m {
            Err(s) => Some(Err(s)),
            Ok(m) => m.output.map(|o| {
                Ok(match o {
                    exec_output::Output::Stdout(b) => OutputEvent::Stdout(b),
                    exec_output::Output::Stderr(b) => OutputEvent::Stderr(b),
                    exec_output::Output::Exit(x) => OutputEvent::Exit(x),
                })
            }),
        });
        Output::new(pod, container, ContainerOp::Exec, events)
    }

    /// The next event; `None` once the stream has ended.
    pub async fn next(&mut self) -> Result<Option<OutputEvent>, PodError> {
        match self.events.next().await {
            None => Ok(None),
            Some(Ok(e)) => Ok(Some(e)),
            Some(Err(status)) => Err(PodError::Container {
                id: self.pod.clone(),
                container: self.container.clone(),
                op: self.op,
                status,
            }),
        }
    }

    /// Copies the output to `stdout` and `stderr` (to `stdout`'s writer when `stderr` is `None`;
    /// nowhere when both are) until it ends, flushing after every chunk. Returns an exec's exit
    /// (`None` for a container's output, which just ends). Write errors are ignored: the output
    /// is read to its end whatever happens to a reader, so the process never blocks on it.
    pub async fn copy_to<O, E>(
        mut self,
        stdout: Option<O>,
        stderr: Option<E>,
    ) -> Result<Option<ExitStatus>, PodError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let (mut stdout, mut stderr) = (stdout, stderr);
        while let Some(event) = self.next().await? {
            match event {
                OutputEvent::Stdout(b) => write(&mut stdout, &b).await,
                OutputEvent::Stderr(b) if stderr.is_some() => write(&mut stderr, &b).await,
                OutputEvent::Stderr(b) => write(&mut stdout, &b).await,
                OutputEvent::Exit(x) => return Ok(Some(x)),
            }
        }
        Ok(None)
    }
}

/// Writes `data` to `w`, if any, and flushes.
async fn write<W: AsyncWrite + Unpin>(w: &mut Option<W>, data: &[u8]) {
    if let Some(f) = w.as_mut() {
        if f.write_all(data).await.is_ok() {
            let _ = f.flush().await;
        }
    }
}
