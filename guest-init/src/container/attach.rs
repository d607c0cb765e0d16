//! Attach, WriteStdin and ResizeTty: the agent's ends of a started
//! container's stdio.

use tokio::sync::mpsc;
use vpod_agent_api::pb::OutputChunk;

use super::containers::Containers;
use super::error::ContainerError;
use super::stdio;

impl Containers {
    /// The receiver of the container's output; one attacher at a time.
    pub fn attach(
        &self,
        id: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<mpsc::Receiver<OutputChunk>>, ContainerError> {
        let c = self.get(id)?;
        c.output
            .clone()
            .try_lock_owned()
            .map_err(|_| ContainerError::State {
                id: id.to_owned(),
                state: "attached",
                what: "one attacher at a time",
            })
    }

    /// Writes to the container's stdin; `close` closes it afterwards.
    pub async fn write_stdin(
        &self,
        id: &str,
        data: &[u8],
        close: bool,
    ) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let mut stdin = c.stdin.lock().await;
        let Some(fd) = stdin.as_ref() else {
            return Err(c.wrong_state("and its stdin is closed (create it with stdin)"));
        };
        if !data.is_empty() {
            stdio::write_all(fd, data)
                .await
                .map_err(c.io("write stdin"))?;
        }
        if close && c.pty.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            *stdin = None;
        }
        Ok(())
    }

    /// Sets the window size of the container's TTY.
    pub fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let pty = c.pty.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(pty) = pty else {
            return Err(c.wrong_state("without a TTY"));
        };
        stdio::resize(&pty, rows, cols).map_err(c.io("resize the tty"))
    }
}
