//! The shim's one error type, and the one place that picks the ttrpc code
//! containerd sees for each failure.
//!
//! containerd acts on the code, not the message: NOT_FOUND for a gone task
//! or process is "already gone" to it, FAILED_PRECONDITION "not now". So each
//! variant names what failed, and [`Error::code`] alone decides its code.

use std::path::PathBuf;

use containerd_shim_protos::ttrpc;
use vpod_sandbox::{net::NetError, sizing::SizingError, PodError, PolicyError};

use crate::config::ConfigError;
use crate::rootfs::RootfsError;

/// What a Task RPC of the shim can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No task of that id in this shim.
    #[error("task {0} not found")]
    TaskNotFound(String),
    /// No exec of that id in the task.
    #[error("exec {exec_id} of task {id} not found")]
    ExecNotFound {
        /// The task (container) id.
        id: String,
        /// The exec id.
        exec_id: String,
    },
    /// The exec has not started or has exited: what containerd expects of a
    /// gone process.
    #[error("the exec'd process is not running")]
    ExecNotRunning,
    /// An exec id given twice.
    #[error("exec {0} already exists")]
    ExecExists(String),
    /// Exec into the sandbox, or into a container that does not run.
    #[error("task {0} is not a running container")]
    NotRunningContainer(String),
    /// An RPC that needs the shim config before the first Create gave it.
    #[error("no task was created in this shim yet")]
    NoConfig,
    /// An RPC that needs the pod's VM before it booted (or after it ended).
    #[error("the pod's VM is not running")]
    NoPod,
    /// The bundle's `config.json`.
    #[error("read {bundle}/config.json: {source}")]
    Spec {
        /// The task's bundle dir.
        bundle: String,
        /// Why the spec did not load.
        source: oci_spec::OciSpecError,
    },
    /// The runtime options of the first Create.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The crash-cleanup marker in the bundle.
    #[error("write {path}: {source}")]
    Marker {
        /// The marker file.
        path: PathBuf,
        /// Why it was not written.
        source: std::io::Error,
    },
    /// The pod's policy (host namespaces, mounts) refuses the spec.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A container's resource limits that size its own VM.
    #[error(transparent)]
    Sizing(#[from] SizingError),
    /// The netns CNI made for the pod.
    #[error(transparent)]
    Network(#[from] NetError),
    /// The pod's VM did not boot.
    #[error(transparent)]
    Boot(PodError),
    /// No free disk slot (or no disk) for a container's image.
    #[error(transparent)]
    AttachImage(PodError),
    /// The agent refused the container (its spec, its mounts).
    #[error(transparent)]
    CreateContainer(PodError),
    /// The agent did not start the container.
    #[error(transparent)]
    StartContainer(PodError),
    /// The container's rootfs as an erofs disk.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// The process spec of an exec.
    #[error("exec process spec: {0}")]
    ExecSpec(#[source] serde_json::Error),
    /// The resources of an Update.
    #[error("update of {id}: resources are not OCI LinuxResources JSON: {source}")]
    Resources {
        /// The task id.
        id: String,
        /// Why they did not parse.
        source: serde_json::Error,
    },
    /// A call to the pod's agent failed. containerd is told the agent's own
    /// message, as before the front named the pod and the container.
    #[error("{}", agent_message(.0))]
    Agent(#[source] PodError),
    /// A kill of a process that exited before the signal reached it: not
    /// found, as runc's shim answers, so containerd's stop goes on.
    #[error("process already finished: {0}")]
    AlreadyFinished(String),
    /// A blocking job of the shim (a rootfs build) died.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    /// A process's exit was lost: its record went away while waited for.
    #[error(transparent)]
    ExitLost(#[from] tokio::sync::watch::error::RecvError),
    /// Stats that do not encode.
    #[error(transparent)]
    Stats(containerd_shim::Error),
    /// An RPC vpod does not serve (pause, resume, checkpoint).
    #[error("{0} is not supported by vpod")]
    Unsupported(&'static str),
}

/// The shim's results.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The ttrpc code containerd gets for this error.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            Error::TaskNotFound(_)
            | Error::ExecNotFound { .. }
            | Error::ExecNotRunning
            | Error::AlreadyFinished(_) => Code::NOT_FOUND,
            Error::ExecExists(_) => Code::ALREADY_EXISTS,
            Error::Spec { .. }
            | Error::Config(_)
            | Error::Policy(_)
            | Error::Sizing(_)
            | Error::CreateContainer(_)
            | Error::Rootfs(_)
            | Error::ExecSpec(_)
            | Error::Resources { .. } => Code::INVALID_ARGUMENT,
            Error::NotRunningContainer(_)
            | Error::NoConfig
            | Error::NoPod
            | Error::Network(_)
            | Error::StartContainer(_) => Code::FAILED_PRECONDITION,
            // Whatever the agent's own code (`PodError::code`): containerd
            // has always had FAILED_PRECONDITION for a refused call, and acts
            // on the code (a NOT_FOUND kill would be "already gone" to it).
            Error::Agent(_) => Code::FAILED_PRECONDITION,
            Error::AttachImage(_) => Code::RESOURCE_EXHAUSTED,
            Error::Marker { .. }
            | Error::Boot(_)
            | Error::Join(_)
            | Error::ExitLost(_)
            | Error::Stats(_) => Code::INTERNAL,
            Error::Unsupported(_) => Code::UNIMPLEMENTED,
        }
    }
}

/// The agent's message when it answered (a `PodError` with a
/// [`code`](PodError::code)); else the front's whole account.
fn agent_message(e: &PodError) -> String {
    match e {
        PodError::Agent { status, .. } | PodError::Container { status, .. } => {
            status.message().to_owned()
        }
        other => other.to_string(),
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttrpc::Code;

    fn status(e: Error) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
            other => panic!("not an RPC status: {other:?}"),
        }
    }

    fn json_error() -> serde_json::Error {
        serde_json::from_str::<u32>("x").unwrap_err()
    }

    fn pod_error() -> PodError {
        PodError::BadId("X".into())
    }

    /// The agent's answer `message` of kind `kind` (tonic's code for that
    /// I/O error kind) to a kill of container `app`.
    fn agent_error(kind: std::io::ErrorKind, message: &str) -> PodError {
        PodError::Container {
            id: "p1".into(),
            container: "app".into(),
            op: vpod_sandbox::pod::ContainerOp::Kill,
            status: std::io::Error::new(kind, message).into(),
        }
    }

    /// The code of each failure is the one the shim returned before the
    /// codes were picked in one place.
    #[test]
    fn each_error_keeps_its_code() {
        let io = || std::io::Error::other("disk full");
        let cases: Vec<(Error, Code)> = vec![
            (Error::TaskNotFound("t".into()), Code::NOT_FOUND),
            (
                Error::ExecNotFound {
                    id: "t".into(),
                    exec_id: "e".into(),
                },
                Code::NOT_FOUND,
            ),
            (Error::ExecNotRunning, Code::NOT_FOUND),
            (Error::ExecExists("e".into()), Code::ALREADY_EXISTS),
            (
                Error::NotRunningContainer("t".into()),
                Code::FAILED_PRECONDITION,
            ),
            (Error::NoConfig, Code::FAILED_PRECONDITION),
            (Error::NoPod, Code::FAILED_PRECONDITION),
            (
                Error::Spec {
                    bundle: "/b".into(),
                    source: oci_spec::OciSpecError::Other("bad".into()),
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Config(ConfigError::Invalid {
                    origin: "o".into(),
                    what: "w".into(),
                }),
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Marker {
                    path: "/b/m".into(),
                    source: io(),
                },
                Code::INTERNAL,
            ),
            (Error::Policy(PolicyError::NotLinux), Code::INVALID_ARGUMENT),
            (
                Error::Sizing(SizingError::MemoryTooSmall(1)),
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Network(NetError::Parse("x".into())),
                Code::FAILED_PRECONDITION,
            ),
            (Error::Boot(pod_error()), Code::INTERNAL),
            (Error::AttachImage(pod_error()), Code::RESOURCE_EXHAUSTED),
            (Error::CreateContainer(pod_error()), Code::INVALID_ARGUMENT),
            (
                Error::StartContainer(pod_error()),
                Code::FAILED_PRECONDITION,
            ),
            (Error::Rootfs(RootfsError::NoLower), Code::INVALID_ARGUMENT),
            (Error::ExecSpec(json_error()), Code::INVALID_ARGUMENT),
            (
                Error::Resources {
                    id: "t".into(),
                    source: json_error(),
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Agent(agent_error(
                    std::io::ErrorKind::NotFound,
                    "no such container",
                )),
                Code::FAILED_PRECONDITION,
            ),
            (
                Error::Stats(containerd_shim::Error::Other("x".into())),
                Code::INTERNAL,
            ),
            (Error::Unsupported("pause"), Code::UNIMPLEMENTED),
        ];
        for (e, code) in cases {
            let what = format!("{e:?}");
            assert_eq!(status(e).0, code, "{what}");
        }
    }

    /// Whatever code the agent answers with, containerd gets the one it
    /// always got for a refused agent call; a stream that has ended (no
    /// answer of the agent's) too.
    #[test]
    fn an_agent_failure_is_failed_precondition_whatever_the_agents_code() {
        use std::io::ErrorKind::{ConnectionRefused, InvalidInput, NotFound, PermissionDenied};
        for kind in [NotFound, InvalidInput, ConnectionRefused, PermissionDenied] {
            let e = agent_error(kind, "no");
            assert!(e.code().is_some(), "{kind:?}: the agent answered");
            assert_eq!(
                status(Error::Agent(e)).0,
                Code::FAILED_PRECONDITION,
                "{kind:?}"
            );
        }
        let ended = PodError::Ended {
            id: "p1".into(),
            container: "app".into(),
            op: vpod_sandbox::pod::ContainerOp::WriteStdin,
        };
        assert_eq!(ended.code(), None);
        assert_eq!(
            status(Error::Agent(ended)),
            (
                Code::FAILED_PRECONDITION,
                "pod p1: write to the stdin of container app: the stream has ended".into()
            )
        );
    }

    #[tokio::test]
    async fn errors_of_tasks_and_channels_are_internal() {
        let join = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        assert_eq!(status(Error::from(join)).0, Code::INTERNAL);
        let (tx, mut rx) = tokio::sync::watch::channel(None::<u32>);
        drop(tx);
        let lost = rx.wait_for(|x| x.is_some()).await.unwrap_err();
        assert_eq!(status(Error::from(lost)).0, Code::INTERNAL);
    }

    /// The message containerd logs is the one the shim gave before.
    #[test]
    fn messages_say_what_failed() {
        assert_eq!(
            status(Error::TaskNotFound("abc".into())).1,
            "task abc not found"
        );
        assert_eq!(
            status(Error::ExecNotFound {
                id: "abc".into(),
                exec_id: "e1".into()
            })
            .1,
            "exec e1 of task abc not found"
        );
        assert_eq!(
            status(Error::Unsupported("pause")).1,
            "pause is not supported by vpod"
        );
        assert_eq!(
            status(Error::Agent(agent_error(
                std::io::ErrorKind::NotFound,
                "container x not found"
            )))
            .1,
            "container x not found"
        );
        assert!(status(Error::ExecSpec(json_error()))
            .1
            .starts_with("exec process spec: "));
        assert!(status(Error::Resources {
            id: "abc".into(),
            source: json_error()
        })
        .1
        .starts_with("update of abc: resources are not OCI LinuxResources JSON: "));
    }
}
