//! Certificate renewal: each node renews its certificate at a random point between 50%
//! and 80% of its validity (so a cluster's nodes do not all renew at once), with its
//! current certificate, through the leader.
//!
//! The new key is made here; the old certificate stays valid until it expires, so
//! connections opened with it keep working while new ones present the new certificate.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::bootstrap::{load_credentials, save_node_cert};
use crate::leader_ops::{LeaderOp, OpResult};
use crate::manager::Manager;
use crate::pki::{self, NodeKey, Role};
use crate::tls;

/// When to renew a certificate valid from `not_before` to `not_after` (Unix seconds).
pub fn renewal_due(not_before: i64, not_after: i64) -> i64 {
    let span = (not_after - not_before).max(1) as f64;
    let at = rand::thread_rng().gen_range(0.5..0.8);
    not_before + (span * at) as i64
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

async fn renew_once(m: &Arc<Manager>) -> anyhow::Result<()> {
    let key = NodeKey::generate()?;
    let csr_pem = key.csr_pem(&[])?;
    let op = LeaderOp::Renew { node_id: m.id, role: Role::Manager, csr_pem };
    let OpResult::Renewed(r) = m.leader_op(op).await.map_err(|e| anyhow::anyhow!("{}", e.message))? else {
        anyhow::bail!("unexpected reply to a renewal");
    };
    let key_pem = key.key_pem();
    let certified = tls::certified_key(&r.cert_pem, key_pem.expose())?;
    save_node_cert(&m.data_dir, m.kek.as_ref(), &r.cert_pem, &key_pem)?;
    m.cert.replace(certified);
    Ok(())
}

/// Runs until shutdown, renewing this manager's certificate when it is due.
pub async fn renew_certificates(m: Arc<Manager>) {
    loop {
        let due = match load_credentials(&m.data_dir, m.kek.as_ref()) {
            Ok(creds) => match tls::certs_from_pem(&creds.cert_pem).ok().and_then(|c| pki::parse_peer(&c[0]).ok()) {
                Some(id) => renewal_due(id.not_before_unix, id.not_after_unix),
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
            _ = m.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            match renew_once(&m).await {
                Ok(()) => {
                    tracing::info!(node_id = m.id, "renewed this node's certificate");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "certificate renewal failed; retrying");
                    tokio::select! {
                        _ = m.shutdown.cancelled() => return,
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
