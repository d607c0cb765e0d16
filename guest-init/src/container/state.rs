//! A container's status, and the one place that says which operation each
//! status allows.

use vpod_agent_api::pb::ContainerState;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Made by CreateContainer; its process has not run.
    Created,
    /// StartContainer is under way (a second one is refused).
    Starting,
    /// Its process runs.
    Running {
        /// The container's process (the PID namespace's init), guest pid.
        pid: i32,
    },
    /// Its process exited (or it was stopped before it ever started).
    Exited,
}

impl State {
    /// The name error messages use.
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running { .. } => "running",
            State::Exited => "exited",
        }
    }

    /// A container starts once, from Created.
    pub fn can_start(self) -> bool {
        self == State::Created
    }

    /// Signals go to a running process only.
    pub fn can_signal(self) -> bool {
        matches!(self, State::Running { .. })
    }

    /// An exec joins the namespaces of a running process.
    pub fn can_exec(self) -> bool {
        matches!(self, State::Running { .. })
    }

    /// Stop waits for a start under way to settle first.
    pub fn can_stop(self) -> bool {
        self != State::Starting
    }

    /// Remove waits for a start under way to settle first.
    pub fn can_remove(self) -> bool {
        self != State::Starting
    }

    /// The running process, if there is one.
    pub fn pid(self) -> Option<i32> {
        match self {
            State::Running { pid } => Some(pid),
            _ => None,
        }
    }

    /// As ListContainers reports it: the state and the pid (0 if none).
    pub fn info(self) -> (ContainerState, u32) {
        match self {
            State::Created | State::Starting => (ContainerState::Created, 0),
            State::Running { pid } => (ContainerState::Running, pid as u32),
            State::Exited => (ContainerState::Exited, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_allows_its_operations() {
        let running = State::Running { pid: 7 };
        let all = [State::Created, State::Starting, running, State::Exited];
        let start: Vec<bool> = all.iter().map(|s| s.can_start()).collect();
        assert_eq!(start, [true, false, false, false]);
        let signal: Vec<bool> = all.iter().map(|s| s.can_signal()).collect();
        assert_eq!(signal, [false, false, true, false]);
        let exec: Vec<bool> = all.iter().map(|s| s.can_exec()).collect();
        assert_eq!(exec, [false, false, true, false]);
        let stop: Vec<bool> = all.iter().map(|s| s.can_stop()).collect();
        assert_eq!(stop, [true, false, true, true]);
        let remove: Vec<bool> = all.iter().map(|s| s.can_remove()).collect();
        assert_eq!(remove, [true, false, true, true]);
        assert_eq!(running.pid(), Some(7));
        assert_eq!(State::Starting.pid(), None);
        assert_eq!(running.info(), (ContainerState::Running, 7));
        assert_eq!(State::Starting.info(), (ContainerState::Created, 0));
    }
}
