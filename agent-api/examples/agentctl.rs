//! agentctl: talk to a guest agent through the VMM's vsock unix socket.
//!
//! ```text
//! cargo run -p vpod-agent-api --example agentctl -- UDS [--port N] [--wait SECS] COMMAND
//!   COMMAND: ping | version | boot-times | health [INTERVAL_MS] | logs [kernel|agent] [--follow]
//!            | shutdown [poweroff|reboot]
//! ```
//! Exit status: 0 ok, 1 error, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vpod_agent_api::pb::{
    BootTimesRequest, HealthRequest, LogSource, LogsRequest, PingRequest, ShutdownKind,
    ShutdownRequest, VersionRequest,
};
use vpod_agent_api::{connect_with_retry, AGENT_VSOCK_PORT};

const USAGE: &str = "usage: agentctl UDS [--port N] [--wait SECS] \
ping | version | boot-times | health [INTERVAL_MS] | logs [kernel|agent] [--follow] | shutdown [poweroff|reboot]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = Vec::new();
    let mut port = AGENT_VSOCK_PORT;
    let mut wait = Duration::from_secs(10);
    let mut follow = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--port" => match it.next().map(|p| p.parse()) {
                Some(Ok(p)) => port = p,
                _ => return usage(),
            },
            "--wait" => match it.next().map(|w| w.parse::<f64>()) {
                Some(Ok(w)) if w >= 0.0 && w.is_finite() => wait = Duration::from_secs_f64(w),
                _ => return usage(),
            },
            "--follow" => follow = true,
            _ => args.push(arg),
        }
    }
    if args.len() < 2 {
        return usage();
    }
    let uds = PathBuf::from(&args[0]);

    let start = Instant::now();
    let mut client = match connect_with_retry(&uds, port, wait).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agentctl: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!(
        "agentctl: connected in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    let result: Result<(), tonic::Status> = async {
        match (args[1].as_str(), args.get(2).map(String::as_str)) {
            ("ping", None) => {
                let t = Instant::now();
                let r = client.ping(PingRequest { token: 42 }).await?.into_inner();
                println!(
                    "pong token={} rtt={:.3} ms",
                    r.token,
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            ("version", None) => {
                println!(
                    "{:#?}",
                    client.version(VersionRequest {}).await?.into_inner()
                );
            }
            ("boot-times", None) => {
                let b = client.boot_times(BootTimesRequest {}).await?.into_inner();
                println!("{b:#?}");
                println!(
                    "kernel -> init start: {:.3} ms, init start -> agent listening: {:.3} ms",
                    b.init_start_boottime_ns as f64 / 1e6,
                    b.agent_listening_boottime_ns
                        .saturating_sub(b.init_start_boottime_ns) as f64
                        / 1e6
                );
            }
            ("health", interval) => {
                let interval_ms = match interval.map(str::parse).transpose() {
                    Ok(i) => i.unwrap_or(0),
                    Err(_) => return Err(tonic::Status::invalid_argument("bad interval")),
                };
                let mut s = client
                    .health(HealthRequest { interval_ms })
                    .await?
                    .into_inner();
                while let Some(r) = s.message().await? {
                    println!("{r:?}");
                }
            }
            ("logs", which) => {
                let source = match which {
                    None => LogSource::All,
                    Some("kernel") => LogSource::Kernel,
                    Some("agent") => LogSource::Agent,
                    Some(_) => {
                        return Err(tonic::Status::invalid_argument("logs: kernel or agent"))
                    }
                };
                let mut s = client
                    .logs(LogsRequest {
                        source: source as i32,
                        follow,
                    })
                    .await?
                    .into_inner();
                while let Some(e) = s.message().await? {
                    let src = if e.source == LogSource::Kernel as i32 {
                        "kernel"
                    } else {
                        "agent"
                    };
                    println!(
                        "[{:>12.6}] {src} <{}> {}",
                        e.boottime_ns as f64 / 1e9,
                        e.level,
                        e.message
                    );
                }
            }
            ("shutdown", kind) => {
                let kind = match kind {
                    None | Some("poweroff") => ShutdownKind::Poweroff,
                    Some("reboot") => ShutdownKind::Reboot,
                    Some(_) => {
                        return Err(tonic::Status::invalid_argument(
                            "shutdown: poweroff or reboot",
                        ))
                    }
                };
                client
                    .shutdown(ShutdownRequest { kind: kind as i32 })
                    .await?;
                println!("shutdown ({}) accepted", kind.as_str_name());
            }
            _ => return Err(tonic::Status::invalid_argument(USAGE)),
        }
        Ok(())
    }
    .await;

    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(s) if s.code() == tonic::Code::InvalidArgument && s.message() == USAGE => usage(),
        Err(s) => {
            eprintln!("agentctl: {}: {}", s.code(), s.message());
            ExitCode::from(1)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
