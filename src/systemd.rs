//! What a service manager needs from porteiro: a readiness notification with the main PID
//! (systemd `Type=notify`), and a binary upgrade the service starts itself on SIGUSR2, so the
//! new process runs inside the service and can tell systemd it is now the main one. Without
//! `NOTIFY_SOCKET` (not under systemd) the notifications are no-ops; SIGUSR2 works anywhere.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sd_notify::NotifyState;

use crate::conn::probe::SelfProbes;

/// Tells the service manager porteiro serves, once a listener accepts connections. The PID
/// goes with it: after a graceful upgrade this process, not the one it replaced, is the main
/// one (the unit needs `NotifyAccess=all` to believe it).
pub struct ReadyNotifier {
    /// Where to knock: plain listeners, or the admin listener. Never a TLS listener: a
    /// connection closed without a handshake would count as a refused handshake.
    pub probes: Vec<SocketAddr>,
    /// Shared with the listeners, which tell these knocks from clients.
    pub knocks: Arc<SelfProbes>,
}

#[async_trait]
impl BackgroundService for ReadyNotifier {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Services start side by side: wait (bounded) for one listener to accept.
        'wait: for _ in 0..500 {
            for addr in &self.probes {
                if self.knocks.knock(*addr).await {
                    break 'wait;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.knocks.done();
        let pid = std::process::id();
        let status = format!("serving (pid {pid})");
        let states = [
            NotifyState::MainPid(pid),
            NotifyState::Ready,
            NotifyState::Status(&status),
        ];
        if let Err(e) = sd_notify::notify(&states) {
            tracing::warn!(error = %e, "cannot tell the service manager porteiro is ready");
        }
    }
}

/// On SIGUSR2, runs `porteiro upgrade` for this process: the binary at the path porteiro was
/// started from (a package upgrade replaces that file) takes the listening sockets over.
pub struct UpgradeOnSignal {
    pub config: PathBuf,
}

#[async_trait]
impl BackgroundService for UpgradeOnSignal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
            tracing::warn!("cannot listen for SIGUSR2: binary upgrades by signal are off");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = usr2.recv() => self.upgrade().await,
            }
        }
    }
}

impl UpgradeOnSignal {
    async fn upgrade(&self) {
        let exe = std::env::args_os()
            .next()
            .unwrap_or_else(|| "porteiro".into());
        let pid = std::process::id().to_string();
        tracing::info!(binary = %PathBuf::from(&exe).display(), "SIGUSR2: starting a graceful upgrade");
        let status = tokio::process::Command::new(&exe)
            .args(["upgrade", "--pid", &pid, "-c"])
            .arg(&self.config)
            .stdin(std::process::Stdio::null())
            .status()
            .await;
        // On success this process gets SIGQUIT and hands its sockets over.
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::error!(status = %s, "upgrade refused; this process keeps serving"),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the upgrade; this process keeps serving")
            }
        }
    }
}
