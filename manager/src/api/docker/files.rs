//! `/secrets` and `/configs`: list, create, inspect, update (labels only),
//! remove — over the same functions as shoal's own API (`api::files`). A
//! secret's `Spec.Data` is never answered; a config's is.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use base64::Engine as _;
use common::secret::{Kind, Stored};
use serde_json::{json, Value};

use super::filters::Filters;
use super::objects::timestamp;
use super::{body, manager, ApiState, Error, IdPath, Result};
use crate::api::files::{self as shoal, FileKind, B64};

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    filters: Option<String>,
}

#[derive(serde::Deserialize)]
pub(super) struct VersionQuery {
    version: Option<String>,
}

/// A Secret or Config object as the Engine renders it.
fn object<Id: FileKind>(item: &Stored<Id>) -> Value {
    let mut spec = json!({"Name": item.name, "Labels": item.labels});
    if Id::KIND == Kind::Config {
        spec["Data"] = json!(B64.encode(&item.data));
    }
    json!({
        "ID": item.id.to_string(),
        "Version": {"Index": item.version},
        "CreatedAt": timestamp(item.created_at),
        "UpdatedAt": timestamp(item.updated_at),
        "Spec": spec,
    })
}

/// The SecretSpec/ConfigSpec fields shoal reads.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct FileSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    driver: Option<Value>,
    #[serde(default)]
    templating: Option<Value>,
}

pub(super) fn file_spec(v: Value, kind: Kind) -> Result<FileSpec> {
    if !v.is_object() {
        return Err(Error::BadRequest(format!("a {kind} spec must be a JSON object")));
    }
    let spec: FileSpec = serde_json::from_value(v).map_err(|e| Error::BadRequest(format!("invalid JSON: {e}")))?;
    if spec.driver.as_ref().is_some_and(|d| !d.is_null()) {
        return Err(Error::BadRequest(format!("{kind} drivers are not supported by shoal")));
    }
    if spec.templating.as_ref().is_some_and(|d| !d.is_null()) {
        return Err(Error::BadRequest(format!("{kind} templating is not supported by shoal")));
    }
    Ok(spec)
}

pub(super) async fn list<Id: FileKind>(state: web::Data<ApiState>, q: web::Query<ListQuery>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let f = Filters::parse(q.filters.as_deref()).map_err(Error::BadRequest)?;
    f.only(&["id", "name", "names", "label"]).map_err(Error::BadRequest)?;
    let store = m.store.read();
    let list: Vec<Value> = Id::table(&store)
        .values()
        .filter(|s| {
            f.any("id", |x| s.id.as_ref().starts_with(x))
                && f.any("name", |x| s.name.starts_with(x))
                && f.any("names", |x| s.name == x)
                && f.labels("label", &s.labels)
        })
        .map(object)
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

pub(super) async fn create<Id: FileKind>(state: web::Data<ApiState>, payload: web::Payload) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let spec = file_spec(body(payload).await?, Id::KIND)?;
    let data = B64
        .decode(spec.data.unwrap_or_default().trim())
        .map_err(|e| Error::BadRequest(format!("invalid Data: not base64: {e}")))?;
    let item = shoal::create::<Id>(m, spec.name.unwrap_or_default(), spec.labels.unwrap_or_default(), data).await?;
    Ok(HttpResponse::Created().json(json!({"ID": item.id.to_string()})))
}

pub(super) async fn inspect<Id: FileKind>(state: web::Data<ApiState>, path: web::Path<IdPath>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let item = shoal::find::<Id>(m, &path.id)?;
    Ok(HttpResponse::Ok().json(object(&item)))
}

pub(super) async fn update<Id: FileKind>(
    state: web::Data<ApiState>,
    path: web::Path<IdPath>,
    q: web::Query<VersionQuery>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let item = shoal::find::<Id>(m, &path.id)?;
    let spec = file_spec(body(payload).await?, Id::KIND)?;
    let version = match q.version.as_deref() {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| Error::BadRequest(format!("invalid version {v:?}")))?),
    };
    // swarmkit's rule: only the labels may change.
    let same_data = match &spec.data {
        None => true,
        Some(d) => B64.decode(d.trim()).is_ok_and(|d| d == item.data),
    };
    if spec.name.as_ref().is_some_and(|n| *n != item.name) || !same_data {
        return Err(Error::BadRequest("only updates to Labels are allowed".into()));
    }
    shoal::update_labels::<Id>(m, item.id, spec.labels.unwrap_or_default(), version).await?;
    Ok(HttpResponse::Ok().finish())
}

pub(super) async fn remove<Id: FileKind>(state: web::Data<ApiState>, path: web::Path<IdPath>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let item = shoal::find::<Id>(m, &path.id)?;
    shoal::remove::<Id>(m, item.id).await?;
    Ok(HttpResponse::NoContent().finish())
}
