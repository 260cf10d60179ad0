//! `/networks`: list, inspect, create, remove — shoal's overlay networks
//! as the Engine renders Swarm's, over the same functions as shoal's own
//! API (`api::networks`). Only the overlay driver exists: a network of any
//! other driver (the docker CLI asks for `bridge` unless given `-d`) is
//! refused with what to do.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use common::network::{Network, NetworkSpec};
use serde_json::{json, Value};

use super::filters::Filters;
use super::objects::timestamp;
use super::{body, manager, ApiState, Error, IdPath, Result};
use crate::api::networks as shoal;

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    filters: Option<String>,
}

/// A Network object as the Engine renders a swarm-scoped overlay network.
pub(super) fn object(n: &Network) -> Value {
    json!({
        "Name": n.spec.name,
        "Id": n.id,
        "Created": timestamp(n.created_at),
        "Scope": "swarm",
        "Driver": "overlay",
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": [{"Subnet": n.subnet.to_string()}]},
        "Internal": false,
        "Attachable": n.spec.attachable,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": {},
        "Options": n.spec.options,
        "Labels": n.spec.labels,
    })
}

/// The NetworkCreateRequest fields shoal reads.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateRequest {
    #[serde(default)]
    name: String,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    attachable: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    ingress: bool,
    #[serde(default, rename = "IPAM")]
    ipam: Option<Ipam>,
    #[serde(default, deserialize_with = "nullable")]
    options: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ipam {
    #[serde(default, deserialize_with = "nullable")]
    config: Vec<IpamConfig>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamConfig {
    #[serde(default)]
    subnet: Option<String>,
}

fn nullable<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

use serde::Deserialize as _;

/// The shoal spec a NetworkCreateRequest asks for.
pub(super) fn spec_of(doc: Value) -> Result<NetworkSpec> {
    if !doc.is_object() {
        return Err(Error::BadRequest("a network create request must be a JSON object".into()));
    }
    let r: CreateRequest = serde_json::from_value(doc).map_err(|e| Error::BadRequest(format!("invalid JSON: {e}")))?;
    match r.driver.as_deref() {
        None | Some("") | Some("overlay") => {}
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "shoal makes overlay networks only, not {other:?}: use `docker network create -d overlay {}`",
                r.name
            )))
        }
    }
    if r.internal || r.ingress {
        return Err(Error::BadRequest(
            "internal and ingress networks are not supported by shoal (its routing mesh is the ingress)".into(),
        ));
    }
    let subnets: Vec<String> = r.ipam.unwrap_or_default().config.into_iter().filter_map(|c| c.subnet).collect();
    let subnet = match subnets.as_slice() {
        [] => None,
        [one] => Some(one.parse().map_err(|e: common::network::NetworkError| Error::BadRequest(e.to_string()))?),
        _ => return Err(Error::BadRequest("shoal takes one subnet per network".into())),
    };
    Ok(NetworkSpec {
        name: r.name,
        driver: Default::default(),
        subnet,
        attachable: r.attachable,
        labels: r.labels,
        options: r.options,
    })
}

pub(super) async fn list(state: web::Data<ApiState>, q: web::Query<ListQuery>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let f = Filters::parse(q.filters.as_deref()).map_err(Error::BadRequest)?;
    f.only(&["id", "name", "driver", "label", "scope", "type"]).map_err(Error::BadRequest)?;
    let store = m.store.read();
    let list: Vec<Value> = store
        .networks
        .values()
        .filter(|n| {
            f.any("id", |x| n.id.as_str().starts_with(x))
                && f.any("name", |x| n.spec.name.contains(x))
                && f.any("driver", |x| x == "overlay")
                && f.any("scope", |x| x == "swarm")
                && f.any("type", |x| x == "custom")
                && f.labels("label", &n.spec.labels)
        })
        .map(object)
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

pub(super) async fn inspect(state: web::Data<ApiState>, path: web::Path<IdPath>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    Ok(HttpResponse::Ok().json(object(&shoal::find_network(m, &path.id)?)))
}

pub(super) async fn create(state: web::Data<ApiState>, payload: web::Payload) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let net = shoal::create(m, spec_of(body(payload).await?)?).await?;
    Ok(HttpResponse::Created().json(json!({"Id": net.id, "Warning": ""})))
}

pub(super) async fn remove(state: web::Data<ApiState>, path: web::Path<IdPath>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    shoal::remove(m, &path.id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_request_becomes_a_spec_and_other_drivers_are_refused_with_what_to_do() {
        let s = spec_of(json!({"Name": "app", "Driver": "overlay", "Attachable": true,
            "Labels": {"com.docker.stack.namespace": "st"}, "IPAM": {"Config": [{"Subnet": "10.20.0.0/16"}]}}))
        .unwrap();
        assert_eq!(s.name, "app");
        assert!(s.attachable);
        assert_eq!(s.subnet.map(|n| n.to_string()).as_deref(), Some("10.20.0.0/16"));
        assert_eq!(s.labels["com.docker.stack.namespace"], "st");
        let e = spec_of(json!({"Name": "app", "Driver": "bridge"})).unwrap_err().to_string();
        assert!(e.contains("use `docker network create -d overlay app`"), "{e}");
        assert!(spec_of(json!({"Name": "x", "IPAM": {"Config": [{"Subnet": "nope"}]}})).is_err());
        assert!(spec_of(json!({"Name": "x", "Ingress": true})).is_err());
        assert!(spec_of(json!({"Name": "x", "Labels": null, "Options": null, "IPAM": {"Config": null}})).is_ok());
    }
}
