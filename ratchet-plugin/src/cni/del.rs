//! DEL: release the container's link ends (see [`crate::ends::release_container`]),
//! then DEL the delegate that served it. Everything already gone counts as
//! done, so DEL can be repeated.

use super::{chain, env::CniEnv, error::CniError, request::Config};
use crate::{ends, store::Store};

/// Releases, then tells the delegate.
pub async fn cmd_del(config: &Config, env: &CniEnv) -> Result<(), CniError> {
    let mut store = ends::open_store(&config.settings).await?;
    let tx = store.begin().await?;
    let released = ends::release_container(tx, &config.settings, &env.container_id, env.pod().ok()).await?;
    for delegate in chain::delegates_for(config, env, !released.is_empty()).await? {
        delegate.del(env, chain::prev_result_for(config, &delegate, &released).as_ref())?;
    }
    Ok(())
}
