//! A manager's certificate renewal: the shared loop of [`crate::trust::renewal`], with the
//! CSR sent to the leader as a leader operation.

use std::sync::Arc;

use crate::manager::leader_ops::{LeaderOp, OpResult};
use crate::manager::Manager;
use crate::trust::pki::Role;

/// Runs until shutdown, renewing this manager's certificate when it is due.
pub async fn keep_renewed(m: Arc<Manager>) {
    let (dir, kek, cert, shutdown) = (m.data_dir.clone(), m.kek.clone(), m.cert.clone(), m.shutdown.clone());
    let fresh = m.clone();
    let renewed = move || {
        let config = crate::trust::tls::client_config(&fresh.ca_pem, Some(fresh.cert.clone()));
        match config.and_then(crate::trust::tls::http_client) {
            Ok(client) => fresh.peers.replace(client),
            Err(e) => tracing::warn!(error = %e, "cannot make a new peer client after a renewal"),
        }
    };
    crate::trust::renewal::keep_renewed(
        dir,
        kek,
        cert,
        shutdown,
        |csr_pem| {
            let m = m.clone();
            async move {
                let op = LeaderOp::Renew { node_id: m.id, role: Role::Manager, csr_pem };
                match m.leader_op(op).await.map_err(|e| anyhow::anyhow!("{}", e.message))? {
                    OpResult::Renewed(r) => Ok(r.cert_pem),
                    _ => anyhow::bail!("unexpected reply to a renewal"),
                }
            }
        },
        renewed,
    )
    .await
}
