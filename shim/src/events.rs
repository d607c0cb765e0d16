//! The task events the shim publishes to containerd, each knowing its topic.

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics;

use crate::process::Exit;

/// One event of a task or of an exec'd process. The pid in each is the
/// shim's: containerd gets no other (see `process.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A task was created.
    Create(TaskCreate),
    /// A task started.
    Start(TaskStart),
    /// An exec was added to a task.
    ExecAdded(TaskExecAdded),
    /// An exec started.
    ExecStarted(TaskExecStarted),
    /// A task or exec ended.
    Exit(TaskExit),
    /// A container was OOM-killed (kubelet reads OOMKilled from it).
    Oom(TaskOOM),
    /// A task was deleted.
    Delete(TaskDelete),
}

impl Event {
    /// The topic containerd files the event under.
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Create(_) => topics::TASK_CREATE_EVENT_TOPIC,
            Event::Start(_) => topics::TASK_START_EVENT_TOPIC,
            Event::ExecAdded(_) => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Event::ExecStarted(_) => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Event::Exit(_) => topics::TASK_EXIT_EVENT_TOPIC,
            Event::Oom(_) => topics::TASK_OOM_EVENT_TOPIC,
            Event::Delete(_) => topics::TASK_DELETE_EVENT_TOPIC,
        }
    }

    fn into_message(self) -> Box<dyn MessageDyn> {
        match self {
            Event::Create(e) => Box::new(e),
            Event::Start(e) => Box::new(e),
            Event::ExecAdded(e) => Box::new(e),
            Event::ExecStarted(e) => Box::new(e),
            Event::Exit(e) => Box::new(e),
            Event::Oom(e) => Box::new(e),
            Event::Delete(e) => Box::new(e),
        }
    }

    /// Task `req.id` was created as `req` asked.
    pub fn create(req: &api::CreateTaskRequest) -> Event {
        Event::Create(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid: std::process::id(),
            ..Default::default()
        })
    }

    /// Task `id` started.
    pub fn start(id: &str) -> Event {
        Event::Start(TaskStart {
            container_id: id.to_owned(),
            pid: std::process::id(),
            ..Default::default()
        })
    }

    /// Exec `exec_id` was added to task `id`.
    pub fn exec_added(id: &str, exec_id: &str) -> Event {
        Event::ExecAdded(TaskExecAdded {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        })
    }

    /// Exec `exec_id` of task `id` started.
    pub fn exec_started(id: &str, exec_id: &str) -> Event {
        Event::ExecStarted(TaskExecStarted {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            pid: std::process::id(),
            ..Default::default()
        })
    }

    /// Process `process_id` of task `id` ended (a task's own process has
    /// the task's id, an exec its exec id).
    pub fn exit(id: &str, process_id: &str, exit: &Exit) -> Event {
        Event::Exit(TaskExit {
            container_id: id.to_owned(),
            id: process_id.to_owned(),
            pid: std::process::id(),
            exit_status: exit.code,
            exited_at: Some(exit.at.clone()).into(),
            ..Default::default()
        })
    }

    /// Container `id` was OOM-killed.
    pub fn oom(id: &str) -> Event {
        Event::Oom(TaskOOM {
            container_id: id.to_owned(),
            ..Default::default()
        })
    }

    /// Task `id` was deleted, having ended with `exit`.
    pub fn delete(id: &str, exit: &Exit) -> Event {
        Event::Delete(TaskDelete {
            container_id: id.to_owned(),
            id: id.to_owned(),
            pid: std::process::id(),
            exit_status: exit.code,
            exited_at: Some(exit.at.clone()).into(),
            ..Default::default()
        })
    }
}

/// Where events go: containerd's publisher, in the shim's namespace.
pub struct Publisher {
    remote: RemotePublisher,
    namespace: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Events through `remote`, in `namespace`.
    pub fn new(remote: RemotePublisher, namespace: String) -> Publisher {
        Publisher { remote, namespace }
    }

    /// Publishes `event` under its topic; a failure is logged, not returned
    /// (the RPC that caused the event has succeeded).
    pub async fn publish(&self, event: Event) {
        let topic = event.topic();
        let ctx = containerd_shim::Context::default();
        if let Err(e) = self
            .remote
            .publish(ctx, topic, &self.namespace, event.into_message())
            .await
        {
            log::warn!("publish {topic}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit() -> Exit {
        Exit::now(137)
    }

    #[test]
    fn each_event_has_its_containerd_topic() {
        let req = api::CreateTaskRequest {
            id: "c1".into(),
            bundle: "/b".into(),
            stdout: "/fifo/out".into(),
            terminal: true,
            ..Default::default()
        };
        let cases = [
            (Event::create(&req), "/tasks/create"),
            (Event::start("c1"), "/tasks/start"),
            (Event::exec_added("c1", "e1"), "/tasks/exec-added"),
            (Event::exec_started("c1", "e1"), "/tasks/exec-started"),
            (Event::exit("c1", "e1", &exit()), "/tasks/exit"),
            (Event::oom("c1"), "/tasks/oom"),
            (Event::delete("c1", &exit()), "/tasks/delete"),
        ];
        for (event, topic) in cases {
            assert_eq!(event.topic(), topic, "{event:?}");
        }
    }

    #[test]
    fn events_carry_the_ids_the_exit_and_the_shims_pid() {
        let x = exit();
        let Event::Exit(e) = Event::exit("c1", "e1", &x) else {
            panic!("not an exit")
        };
        assert_eq!((e.container_id.as_str(), e.id.as_str()), ("c1", "e1"));
        assert_eq!(e.pid, std::process::id());
        assert_eq!(e.exit_status, 137);
        assert_eq!(e.exited_at.into_option(), Some(x.at.clone()));

        let Event::Delete(d) = Event::delete("c1", &x) else {
            panic!("not a delete")
        };
        assert_eq!((d.container_id.as_str(), d.id.as_str()), ("c1", "c1"));
        assert_eq!((d.pid, d.exit_status), (std::process::id(), 137));

        let req = api::CreateTaskRequest {
            id: "c1".into(),
            bundle: "/b".into(),
            stdin: "/fifo/in".into(),
            terminal: true,
            ..Default::default()
        };
        let Event::Create(c) = Event::create(&req) else {
            panic!("not a create")
        };
        assert_eq!((c.container_id.as_str(), c.bundle.as_str()), ("c1", "/b"));
        let io = c.io.into_option().unwrap();
        assert_eq!(io.stdin, "/fifo/in");
        assert!(io.terminal);
        assert_eq!(c.pid, std::process::id());

        let Event::ExecStarted(s) = Event::exec_started("c1", "e1") else {
            panic!("not an exec start")
        };
        assert_eq!((s.exec_id.as_str(), s.pid), ("e1", std::process::id()));
    }
}
