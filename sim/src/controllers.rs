//! Controllers (placeholder, filled in next).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::api::ApiState;

pub fn spawn(state: Arc<ApiState>, shutdown: CancellationToken) {
    let _ = (state, shutdown);
}
