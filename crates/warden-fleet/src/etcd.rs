//! Connecting to etcd: mutual TLS when the config names a CA, certificate
//! and key. There is no channel-wide request timeout (it would also end the
//! watch and keepalive streams); callers bound each unary call with [`within`].

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::Settings;
use crate::Error;

/// Runs one etcd call, giving up after `timeout`.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::Timeout(format!("etcd {what}"))),
    }
}

/// A client that gives up connecting after `timeout`.
pub async fn connect(s: &Settings, timeout: Duration) -> Result<Client, Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(timeout)
        // HTTP/2 pings notice a dead link on an idle watch stream.
        .with_keep_alive(timeout, timeout)
        .with_keep_alive_while_idle(true);
    if s.tls() {
        let read = |p: &Option<std::path::PathBuf>| {
            let p = p.as_ref().expect("tls() checked all three");
            std::fs::read(p).map_err(|e| Error::EtcdOther(format!("{}: {e}", p.display())))
        };
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&s.fleet.ca)?))
            .identity(Identity::from_pem(
                read(&s.fleet.cert)?,
                read(&s.fleet.key)?,
            ));
        opts = opts.with_tls(tls);
    }
    match tokio::time::timeout(timeout, Client::connect(&s.fleet.endpoints, Some(opts))).await {
        Ok(c) => Ok(c?),
        Err(_) => Err(Error::Timeout(format!(
            "connecting to etcd at {}",
            s.fleet.endpoints.join(",")
        ))),
    }
}
