//! A process run in a running container (the agent's Exec): one bidirectional stream whose
//! first input message starts the process and whose later ones carry its stdin, TTY resizes and
//! signals; its output ends with the process's exit. The input stays open while the process
//! runs, whatever the caller does with stdin.

use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use vpod_agent_api::pb::{exec_input, ExecInput, ExecResize, ExecStart, ExitStatus, Process};

use super::error::{ContainerOp, PodError};
use super::stdio::{Output, Stdin};

/// Input messages buffered before the sender waits.
pub(crate) const INPUT_DEPTH: usize = 16;

/// The first message of an exec's input: start `process` in `container`.
pub(crate) fn start_message(container: &str, process: Process) -> ExecInput {
    ExecInput {
        input: Some(exec_input::Input::Start(ExecStart {
            container_id: container.into(),
            process: Some(process),
        })),
    }
}

/// The input side of an exec: resizes, signals, stdin. Cheap to clone; every clone keeps the
/// input open.
#[derive(Debug, Clone)]
pub struct ExecControl {
    input: mpsc::Sender<ExecInput>,
    pod: String,
    container: String,
}

impl ExecControl {
    pub(crate) fn new(pod: &str, container: &str, input: mpsc::Sender<ExecInput>) -> Self {
        ExecControl {
            input,
            pod: pod.into(),
            container: container.into(),
        }
    }

    async fn send(&self, input: exec_input::Input) -> Result<(), PodError> {
        let msg = ExecInput { input: Some(input) };
        self.input.send(msg).await.map_err(|_| PodError::Ended {
            id: self.pod.clone(),
            container: self.container.clone(),
            op: ContainerOp::Exec,
        })
    }

    /// Sets the exec's TTY size.
    pub async fn resize(&self, rows: u32, cols: u32) -> Result<(), PodError> {
        self.send(exec_input::Input::Resize(ExecResize { rows, cols }))
            .await
    }

    /// Sends `signal` to the exec's process (never to its container).
    pub async fn signal(&self, signal: i32) -> Result<(), PodError> {
        self.send(exec_input::Input::Signal(signal)).await
    }

    /// The exec's stdin (the process must have been started with `stdin`).
    pub fn stdin(&self) -> Stdin {
        Stdin::exec(&self.pod, &self.container, self.input.clone())
    }
}

/// A running exec: its input ([`Exec::control`]) and its output.
#[derive(Debug)]
pub struct Exec {
    control: ExecControl,
    output: Output,
}

impl Exec {
    pub(crate) fn new(control: ExecControl, output: Output) -> Exec {
        Exec { control, output }
    }

    /// A handle on the exec's input, for resizes, signals and stdin while its output is read.
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    /// The exec's stdin (see [`ExecControl::stdin`]).
    pub fn stdin(&self) -> Stdin {
        self.control.stdin()
    }

    /// Its input and its output apart (the input stays open while the control lives).
    pub fn into_parts(self) -> (ExecControl, Output) {
        (self.control, self.output)
    }

    /// Copies the exec's output (see [`Output::copy_to`]) until the process exits, keeping its
    /// input open meanwhile; returns its exit (`None`: the stream ended without one).
    pub async fn copy_to<O, E>(
        self,
        stdout: Option<O>,
        stderr: Option<E>,
    ) -> Result<Option<ExitStatus>, PodError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let _open = self.control;
        self.output.copy_to(stdout, stderr).await
    }
}
