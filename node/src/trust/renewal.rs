//! Certificate renewal, the same for managers and workers: each node renews its certificate at a random point between 50%
//! and 80% of its validity (so a cluster's nodes do not all renew at once), with its
//! current certificate, through the leader.
//!
//! The new key is made here; the old certificate stays valid until it expires, so
//! connections opened with it keep working while new ones present the new certificate.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::local::data_dir::DataDir;
use crate::trust::credentials::node_cert_pem;
use crate::trust::pki::{self, NodeKey, PrivateKeyPem};
use crate::trust::tls::{self, NodeCert};

/// When to renew a certificate valid from `not_before` to `not_after` (Unix seconds).
pub fn renewal_due(not_before: i64, not_after: i64) -> i64 {
    let span = (not_after - not_before).max(1) as f64;
    let at = rand::thread_rng().gen_range(0.5..0.8);
    not_before + (span * at) as i64
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Makes a new key, has `request` turn its CSR into a certificate, then has `save` store
/// the pair and swaps it into `cert`.
async fn renew_once<F, Fut, S>(cert: &NodeCert, request: &mut F, save: &mut S) -> anyhow::Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
    S: FnMut(&str, &PrivateKeyPem) -> anyhow::Result<()>,
{
    let key = NodeKey::generate()?;
    let cert_pem = request(key.csr_pem(&[])?).await?;
    let key_pem = key.key_pem();
    let certified = tls::certified_key(&cert_pem, key_pem.expose())?;
    save(&cert_pem, &key_pem)?;
    cert.replace(certified);
    Ok(())
}

/// Runs until shutdown, renewing the node's certificate whenever it is due. `request`
/// sends a CSR to the cluster and returns the signed certificate (a manager asks the
/// leader; a worker posts `/v1/renew` to any manager); `save` seals and writes the new pair
/// (a manager under autolock seals it with its unlock key's KEK, not the key file's).
/// Managers and workers share this.
///
/// `renewed` runs after each renewal, once new connections present the new certificate: the
/// node drops its pooled connections there, since they keep presenting the old one, which
/// the cluster refuses after a short grace period.
pub async fn keep_renewed<F, Fut, S, R>(
    dir: DataDir,
    cert: Arc<NodeCert>,
    shutdown: CancellationToken,
    mut request: F,
    mut save: S,
    mut renewed: R,
) where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
    S: FnMut(&str, &PrivateKeyPem) -> anyhow::Result<()>,
    R: FnMut(),
{
    loop {
        let due = match node_cert_pem(&dir) {
            Ok(cert_pem) => match tls::certs_from_pem(&cert_pem).ok().and_then(|c| pki::parse_peer(&c[0]).ok()) {
                Some(id) => renewal_due(pki::issued_at(id.not_before_unix).min(id.not_after_unix), id.not_after_unix),
                None => {
                    tracing::error!("cannot read this node's certificate; renewal stops");
                    return;
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot load this node's certificate; renewal stops");
                return;
            }
        };
        let wait = Duration::from_secs((due - now_unix()).max(0) as u64);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            match renew_once(&cert, &mut request, &mut save).await {
                Ok(()) => {
                    renewed();
                    tracing::info!("renewed this node's certificate");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "certificate renewal failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_half_and_four_fifths() {
        for _ in 0..1000 {
            let at = renewal_due(1000, 2000);
            assert!((1500..1800).contains(&at), "{at}");
        }
    }
}
