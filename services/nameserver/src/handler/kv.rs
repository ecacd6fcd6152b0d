//! KV config: Put, Get, Delete, List.

use comet_proto::comet::v1 as pb;

use crate::error::NameServerError;
use crate::kv::{validate_kv_name, validate_kv_value};
use crate::registry::Registry;

/// Sets a value durably.
pub async fn put<R: Registry>(
    registry: &R,
    r: pb::PutKvConfigRequest,
) -> Result<pb::PutKvConfigResponse, NameServerError> {
    validate_kv_name("namespace", &r.namespace)?;
    validate_kv_name("key", &r.key)?;
    validate_kv_value(&r.value)?;
    registry.put_kv(r.namespace, r.key, r.value).await?;
    Ok(pb::PutKvConfigResponse {})
}

/// One value, or NOT_FOUND.
pub fn get<R: Registry>(registry: &R, r: pb::GetKvConfigRequest) -> Result<pb::GetKvConfigResponse, NameServerError> {
    validate_kv_name("namespace", &r.namespace)?;
    validate_kv_name("key", &r.key)?;
    match registry.routes().get_kv(&r.namespace, &r.key) {
        Some(value) => Ok(pb::GetKvConfigResponse { value }),
        None => Err(NameServerError::KvNotFound { namespace: r.namespace, key: r.key }),
    }
}

/// Removes a value durably.
pub async fn delete<R: Registry>(
    registry: &R,
    r: pb::DeleteKvConfigRequest,
) -> Result<pb::DeleteKvConfigResponse, NameServerError> {
    validate_kv_name("namespace", &r.namespace)?;
    validate_kv_name("key", &r.key)?;
    let deleted = registry.delete_kv(r.namespace, r.key).await?;
    Ok(pb::DeleteKvConfigResponse { deleted })
}

/// Every entry of a namespace (empty map if none).
pub fn list<R: Registry>(
    registry: &R,
    r: pb::ListKvConfigRequest,
) -> Result<pb::ListKvConfigResponse, NameServerError> {
    validate_kv_name("namespace", &r.namespace)?;
    Ok(pb::ListKvConfigResponse { entries: registry.routes().list_kv(&r.namespace).into_iter().collect() })
}
