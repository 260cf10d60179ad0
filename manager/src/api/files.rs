//! Secrets and configs: the functions both front ends call ([`create`],
//! [`update_labels`], [`remove`], [`resolve_refs`]) and shoal's handlers.
//! A secret's value is never part of an answer.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use base64::Engine as _;
use common::api::{FileCreate, FileInfo};
use common::secret::{self, FileRef, Kind, Stored};
use common::spec::ServiceSpec;
use common::time::now_ms;
use common::{ConfigId, SecretId};

use super::{manager, propose, ApiState, Error, Result};
use crate::store::{Command, LabelsUpdate, Store, StoreError};
use crate::Manager;

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One kind's table and commands, so the handlers serve both kinds alike.
pub trait FileKind: Sized + Clone + Ord + std::fmt::Display + From<String> + AsRef<str> + 'static {
    const KIND: Kind;
    fn fresh() -> Self;
    fn table(store: &Store) -> &BTreeMap<Self, Stored<Self>>;
    fn refs(spec: &ServiceSpec) -> &[FileRef<Self>];
    fn create(item: Stored<Self>) -> Command;
    fn update(u: LabelsUpdate<Self>) -> Command;
    fn remove(id: Self) -> Command;
}

impl FileKind for SecretId {
    const KIND: Kind = Kind::Secret;
    fn fresh() -> Self {
        SecretId::random()
    }
    fn table(store: &Store) -> &BTreeMap<Self, Stored<Self>> {
        &store.secrets
    }
    fn refs(spec: &ServiceSpec) -> &[FileRef<Self>] {
        &spec.task.secrets
    }
    fn create(item: Stored<Self>) -> Command {
        Command::CreateSecret(item)
    }
    fn update(u: LabelsUpdate<Self>) -> Command {
        Command::UpdateSecret(u)
    }
    fn remove(id: Self) -> Command {
        Command::RemoveSecret(id)
    }
}

impl FileKind for ConfigId {
    const KIND: Kind = Kind::Config;
    fn fresh() -> Self {
        ConfigId::random()
    }
    fn table(store: &Store) -> &BTreeMap<Self, Stored<Self>> {
        &store.configs
    }
    fn refs(spec: &ServiceSpec) -> &[FileRef<Self>] {
        &spec.task.configs
    }
    fn create(item: Stored<Self>) -> Command {
        Command::CreateConfig(item)
    }
    fn update(u: LabelsUpdate<Self>) -> Command {
        Command::UpdateConfig(u)
    }
    fn remove(id: Self) -> Command {
        Command::RemoveConfig(id)
    }
}

/// By full id, name or unique id prefix.
pub fn find<Id: FileKind>(m: &Manager, key: &str) -> Result<Stored<Id>> {
    let store = m.store.read();
    let table = Id::table(&store);
    if let Some(s) = table.get(&Id::from(key.to_string())).or_else(|| table.values().find(|s| s.name == key)) {
        return Ok(s.clone());
    }
    let mut matches = table.values().filter(|s| s.id.as_ref().starts_with(key));
    match (matches.next(), matches.next()) {
        (Some(s), None) if !key.is_empty() => Ok(s.clone()),
        _ => Err(StoreError::NoSuchFile(Id::KIND, key.to_string()).into()),
    }
}

/// Names of the services whose spec names `id`.
pub fn users<Id: FileKind>(store: &Store, id: &Id) -> Vec<String> {
    store
        .services
        .values()
        .filter(|s| Id::refs(&s.spec).iter().any(|r| r.id == *id))
        .map(|s| s.spec.name.clone())
        .collect()
}

pub fn info<Id: FileKind>(store: &Store, item: &Stored<Id>) -> FileInfo {
    FileInfo {
        id: item.id.to_string(),
        name: item.name.clone(),
        labels: item.labels.clone(),
        created_at: item.created_at,
        updated_at: item.updated_at,
        version: item.version,
        size: item.data.len(),
        data: (Id::KIND == Kind::Config).then(|| B64.encode(&item.data)),
        services: users(store, &item.id),
    }
}

/// Checks and creates one; returns it as stored.
pub async fn create<Id: FileKind>(
    m: &Manager,
    name: String,
    labels: BTreeMap<String, String>,
    data: Vec<u8>,
) -> Result<Stored<Id>> {
    secret::validate_name(&name).map_err(common::spec::SpecError::from)?;
    secret::validate_data(Id::KIND, &data).map_err(common::spec::SpecError::from)?;
    let now = now_ms();
    let item = Stored { id: Id::fresh(), name, labels, data, created_at: now, updated_at: now, version: 1 };
    propose(m, Id::create(item.clone())).await?;
    Ok(item)
}

pub async fn update_labels<Id: FileKind>(
    m: &Manager,
    id: Id,
    labels: BTreeMap<String, String>,
    expect_version: Option<u64>,
) -> Result<()> {
    propose(m, Id::update(LabelsUpdate { id, labels, at: now_ms(), expect_version })).await
}

pub async fn remove<Id: FileKind>(m: &Manager, id: Id) -> Result<()> {
    propose(m, Id::remove(id)).await
}

/// Fills in each reference's id from its name (a reference from the CLI
/// names only), or its name from its id (the Engine API's clients may send
/// only the id); an unknown one is docker's `secret not found: NAME`.
pub fn resolve_refs(store: &Store, spec: &mut ServiceSpec) -> std::result::Result<(), StoreError> {
    fn one<Id: FileKind>(table: &BTreeMap<Id, Stored<Id>>, r: &mut FileRef<Id>) -> std::result::Result<(), StoreError> {
        let found = if r.id.as_ref().is_empty() { table.values().find(|s| s.name == r.name) } else { table.get(&r.id) };
        let Some(s) = found else {
            let key = if r.name.is_empty() { r.id.to_string() } else { r.name.clone() };
            return Err(StoreError::NoSuchFile(Id::KIND, key));
        };
        r.id = s.id.clone();
        r.name = s.name.clone();
        Ok(())
    }
    for r in &mut spec.task.secrets {
        one(&store.secrets, r)?;
    }
    for r in &mut spec.task.configs {
        one(&store.configs, r)?;
    }
    Ok(())
}

pub(super) fn decode_data(b64: &str) -> Result<Vec<u8>> {
    B64.decode(b64.trim()).map_err(|e| Error::InvalidData(e.to_string()))
}

pub(super) async fn list<Id: FileKind>(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let store = m.store.read();
    let list: Vec<FileInfo> = Id::table(&store).values().map(|s| info(&store, s)).collect();
    Ok(HttpResponse::Ok().json(list))
}

pub(super) async fn get<Id: FileKind>(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let item = find::<Id>(m, &key)?;
    Ok(HttpResponse::Ok().json(info(&m.store.read(), &item)))
}

pub(super) async fn post<Id: FileKind>(
    state: web::Data<ApiState>,
    body: web::Json<FileCreate>,
) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let body = body.into_inner();
    let data = decode_data(&body.data)?;
    let item = create::<Id>(m, body.name, body.labels, data).await?;
    Ok(HttpResponse::Created().json(info(&m.store.read(), &item)))
}

pub(super) async fn delete<Id: FileKind>(state: web::Data<ApiState>, key: web::Path<String>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let item = find::<Id>(m, &key)?;
    let shown = info(&m.store.read(), &item);
    remove(m, item.id).await?;
    Ok(HttpResponse::Ok().json(shown))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Service;
    use common::secret::Secret;
    use common::spec::{ServiceMode, TaskTemplate};
    use common::ServiceId;

    fn store_with(names: &[&str]) -> Store {
        let mut s = Store::default();
        for n in names {
            s.apply(Command::CreateSecret(Secret {
                id: SecretId::from(format!("id-{n}")),
                name: n.to_string(),
                labels: BTreeMap::new(),
                data: b"v".to_vec(),
                created_at: 1,
                updated_at: 1,
                version: 1,
            }))
            .unwrap();
        }
        s
    }

    fn spec_using(refs: &[(&str, &str)]) -> ServiceSpec {
        let mut task = TaskTemplate::new("busybox");
        task.secrets = refs
            .iter()
            .map(|(id, name)| FileRef {
                id: SecretId::from(*id),
                name: name.to_string(),
                target: "t".into(),
                uid: "0".into(),
                gid: "0".into(),
                mode: 0o444,
            })
            .collect();
        ServiceSpec {
            name: "web".into(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task,
            update: Default::default(),
            rollback: Default::default(),
            engine_spec: None,
            endpoint_mode: Default::default(),
        }
    }

    #[test]
    fn references_resolve_by_name_or_id_and_unknown_ones_are_named() {
        let store = store_with(&["db", "api"]);
        let mut by_name = spec_using(&[("", "db")]);
        resolve_refs(&store, &mut by_name).unwrap();
        assert_eq!(by_name.task.secrets[0].id, SecretId::from("id-db"));
        let mut by_id = spec_using(&[("id-api", "")]);
        resolve_refs(&store, &mut by_id).unwrap();
        assert_eq!(by_id.task.secrets[0].name, "api");
        let mut unknown = spec_using(&[("", "nope")]);
        assert_eq!(resolve_refs(&store, &mut unknown).unwrap_err().to_string(), "secret not found: nope");
    }

    #[test]
    fn a_secret_in_use_cannot_go_and_the_error_names_the_services() {
        let mut store = store_with(&["db"]);
        let mut spec = spec_using(&[("", "db")]);
        resolve_refs(&store, &mut spec).unwrap();
        store.apply(Command::CreateService(Service::new(ServiceId::from("s1"), spec.clone(), 1))).unwrap();
        let err = store.apply(Command::RemoveSecret(SecretId::from("id-db"))).unwrap_err();
        assert_eq!(err.to_string(), "secret 'db' is in use by the following service: web");
        assert!(store.secrets.contains_key(&SecretId::from("id-db")));
        assert_eq!(users(&store, &SecretId::from("id-db")), ["web"]);
        store.apply(Command::RemoveService(ServiceId::from("s1"))).unwrap();
        store.apply(Command::RemoveSecret(SecretId::from("id-db"))).unwrap();
        assert!(store.secrets.is_empty());
    }

    #[test]
    fn names_are_unique_and_a_spec_must_name_existing_ones() {
        let mut store = store_with(&["db"]);
        let dup = Command::CreateSecret(Secret {
            id: SecretId::from("other"),
            name: "db".into(),
            labels: BTreeMap::new(),
            data: b"x".to_vec(),
            created_at: 1,
            updated_at: 1,
            version: 1,
        });
        assert_eq!(store.apply(dup).unwrap_err().to_string(), "secret db already exists");
        let spec = spec_using(&[("gone", "gone")]);
        let err = store.apply(Command::CreateService(Service::new(ServiceId::from("s1"), spec, 1))).unwrap_err();
        assert_eq!(err.to_string(), "secret not found: gone");
        assert!(store.services.is_empty());
    }

    #[test]
    fn labels_change_at_the_expected_version_only() {
        let mut store = store_with(&["db"]);
        let id = SecretId::from("id-db");
        let up = |v| {
            Command::UpdateSecret(LabelsUpdate {
                id: id.clone(),
                labels: BTreeMap::from([("a".into(), "b".into())]),
                at: 2,
                expect_version: Some(v),
            })
        };
        assert!(matches!(store.apply(up(7)), Err(StoreError::FileConflict(..))));
        store.apply(up(1)).unwrap();
        assert_eq!(store.secrets[&id].version, 2);
        assert_eq!(store.secrets[&id].labels["a"], "b");
        assert_eq!(store.secrets[&id].data, b"v", "the value never changes");
    }
}
