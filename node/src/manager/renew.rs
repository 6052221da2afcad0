//! A manager's certificate renewal: the shared loop of [`crate::trust::renewal`], with the
//! CSR sent to the leader as a leader operation.

use std::sync::Arc;

use crate::manager::leader_ops::{LeaderOp, OpResult};
use crate::manager::Manager;
use crate::trust::pki::Role;

/// Runs until shutdown, renewing this manager's certificate when it is due.
pub async fn keep_renewed(m: Arc<Manager>) {
    let (dir, cert, shutdown) = (m.data_dir.clone(), m.cert.clone(), m.shutdown.clone());
    let (saver, fresh) = (m.clone(), m.clone());
    crate::trust::renewal::keep_renewed(
        dir,
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
        move |cert_pem: &str, key: &_| crate::manager::tls_keys::save_renewed(&saver, cert_pem, key),
        move || fresh.refresh_peer_client(),
    )
    .await
}

impl Manager {
    /// A new pooled client for calls to other managers, presenting the current certificate
    /// (pooled connections keep presenting the one they were opened with).
    pub(crate) fn refresh_peer_client(&self) {
        let config = crate::trust::tls::peer_client_config(&self.ca_pem, self.cert.clone());
        match config.and_then(crate::trust::tls::http_client) {
            Ok(client) => self.peers.replace(client),
            Err(e) => tracing::warn!(error = %e, "cannot make a new peer client after a certificate change"),
        }
    }
}
