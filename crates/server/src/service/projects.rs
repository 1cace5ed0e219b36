//! Projects: looking one up by id or slug, once for every caller.

use viberglass_domain::{Project, ProjectId, ProjectSlug};
use viberglass_store::{Store, StoreError};

use super::{ServiceError, ServiceResult};

/// The project an id or a slug names.
pub async fn find_project(store: &Store, key: &str) -> ServiceResult<Project> {
    match lookup(store, key).await? {
        Some(project) => Ok(project),
        None => Err(ServiceError::NotFound(format!("there is no project `{key}`: give its id or slug"))),
    }
}

/// The id of the project an id or slug names, if it exists.
pub async fn find_project_id(store: &Store, key: &str) -> Result<Option<ProjectId>, StoreError> {
    Ok(lookup(store, key).await?.map(|p| p.id))
}

async fn lookup(store: &Store, key: &str) -> Result<Option<Project>, StoreError> {
    let found = match key.parse::<ProjectId>() {
        Ok(id) => store.get_project(id).await,
        Err(_) => match ProjectSlug::parse(key) {
            Ok(slug) => store.get_project_by_slug(&slug).await,
            Err(_) => return Ok(None),
        },
    };
    match found {
        Ok(project) => Ok(Some(project)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
