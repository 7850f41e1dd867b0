//! The `herald` binary: wiring only.

use std::process::ExitCode;

use clap::Parser;
use herald::cli::{Cli, Command};
use herald::logging::{self, LogFormat};
use herald::{raise_open_file_limit, Application, Config, Scheduling, Verifier};

fn main() -> ExitCode {
    // A missing .env is the normal case; a broken one is reported by the settings it lacks.
    let _ = dotenvy::dotenv();
    let format = match LogFormat::parse(std::env::var("LOG_FORMAT").ok().as_deref()) {
        Ok(format) => format,
        Err(message) => {
            eprintln!("herald: cannot start: {message}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(format);
    let result = match Cli::parse().command {
        None | Some(Command::Serve) => serve(),
        Some(Command::Token {
            sub,
            admin,
            channels,
            ttl,
        }) => token(&sub, admin, &channels, ttl),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("herald: {message}");
            ExitCode::FAILURE
        }
    }
}

fn token(sub: &str, admin: bool, channels: &[String], ttl: u64) -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    if config.is_development() {
        return Err(
            "JWT_SECRET is not set, so there is no key to sign with. Set it (see .env.example); \
                    a server started without it prints its own admin token"
                .into(),
        );
    }
    let verifier = Verifier::new(&config.jwt, None)?;
    let token = verifier.mint(sub, admin, channels, ttl)?;
    println!("{token}");
    Ok(())
}

/// Heap growth in steps of this many bytes: connection bursts otherwise spend
/// a fifth of their CPU growing glibc's heap a little at a time. Untouched
/// pages are not resident, so this costs address space, not memory.
const HEAP_GROWTH_STEP: i32 = 64 << 20;

fn serve() -> Result<(), String> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, HEAP_GROWTH_STEP);
    }
    // SAFETY: ignoring a signal only changes this process's disposition.
    // A file-size limit must make a store write fail (answered 503), not kill
    // the server with every stream on it.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let open_files = raise_open_file_limit();
    let config = Config::from_env().map_err(|e| e.to_string())?;
    // Before any other thread exists: every thread started later inherits it.
    if config.scheduling == Scheduling::Batch {
        set_batch_scheduling();
    }
    log::info!(
        "open-file limit {open_files}; MAX_CONNECTIONS {}; {} worker(s)",
        config.max_connections,
        config.workers
    );
    if config.client_buffer < config.max_batch {
        // One publish's events reach a stream's queue before any is written.
        log::warn!(
            "CLIENT_BUFFER ({}) is below MAX_BATCH ({}): a batch that large for one \
             audience would end every stream of it, fast readers too",
            config.client_buffer,
            config.max_batch
        );
    }
    actix_web::rt::System::new().block_on(async move {
        let development = config.is_development();
        let (host, demo_login) = (config.host.clone(), config.demo_login);
        let app = Application::build(config)
            .await
            .map_err(|e| format!("cannot start: {e}"))?;
        let base = format!(
            "{}://{}:{}",
            app.scheme(),
            if host == "0.0.0.0" {
                "127.0.0.1"
            } else {
                &host
            },
            app.port()
        );
        // Before the server says it is up, so a SIGHUP from then on is
        // handled (its default action would end the process).
        reload_on_hangup(app.certificates());
        log::info!("Herald listening on {base}");
        if development {
            let admin = app.mint("admin", true, &["*".to_owned()], 24 * 3600)?;
            log::warn!(
                "JWT_SECRET is not set: using a random secret for this run (development mode)"
            );
            log::info!("admin token (24 h): {admin}");
            log::info!(
                "try:  curl -N -H 'Authorization: Bearer {admin}' '{base}/api/events?channel=news'"
            );
            log::info!(
                "and:  curl -H 'Authorization: Bearer {admin}' -H 'Content-Type: application/json' \
                 -d '{{\"event\":\"hello\",\"data\":{{\"text\":\"hi\"}}}}' {base}/api/send"
            );
        }
        if demo_login {
            log::info!("demo page: {base}/");
        }
        let shutdown = app.shutdown_handle();
        actix_web::rt::spawn(async move {
            wait_for_signal().await;
            log::info!("shutting down: draining streams");
            shutdown.run().await;
        });
        app.run_until_stopped().await.map_err(|e| e.to_string())
    })
}

/// Puts this thread, and so every thread it starts, under `SCHED_BATCH`
/// (see [`Scheduling::Batch`]). Where the kernel refuses, Herald runs on
/// under the default policy and says so.
fn set_batch_scheduling() {
    #[cfg(target_os = "linux")]
    {
        let parameters = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler reads the parameters and changes this
        // thread's policy; it has no memory effects on the process.
        let refused = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &parameters) } != 0;
        if refused {
            log::warn!(
                "SCHEDULING=batch: the kernel refused SCHED_BATCH ({}); running under the default policy",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// On every SIGHUP, reads the TLS certificate and key again. Without TLS
/// there is nothing to reload, and the signal is only logged.
fn reload_on_hangup(certificates: Option<herald::Certificates>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            log::warn!("SIGHUP cannot be handled ({e}): a certificate reload needs a restart");
            return;
        }
    };
    actix_web::rt::spawn(async move {
        while hangups.recv().await.is_some() {
            match &certificates {
                None => log::info!("SIGHUP ignored: TLS is not configured, nothing to reload"),
                Some(certificates) => match certificates.reload() {
                    Ok(line) => log::info!("{line}"),
                    Err(e) => log::error!(
                        "TLS: reload failed, still serving the previous certificate: {e}"
                    ),
                },
            }
        }
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            // Without a SIGTERM handler, Ctrl-C still stops the server.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
