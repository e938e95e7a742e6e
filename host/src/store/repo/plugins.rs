//! Issuer, notifier and target instances.

use sqlx::types::Json;

use crate::store::codec::{now, ts};
use crate::store::{
    NewPluginInstance, NewTarget, PluginInstance, Store, StoreError, StoreResult, Target, new_id,
    on_read, on_write,
};

/// Which table an issuer/notifier lives in.
#[derive(Clone, Copy)]
enum InstanceTable {
    Issuers,
    Notifiers,
}

impl InstanceTable {
    fn name(self) -> &'static str {
        match self {
            InstanceTable::Issuers => "issuers",
            InstanceTable::Notifiers => "notifiers",
        }
    }
}

impl Store {
    async fn create_instance(
        &self,
        table: InstanceTable,
        new: NewPluginInstance,
    ) -> StoreResult<PluginInstance> {
        let now = now();
        let sql = format!(
            "INSERT INTO {} (id, name, plugin_name, plugin_version, settings, encrypted_secrets,
                             grants, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING *",
            table.name()
        );
        on_write!(self, |pool| {
            sqlx::query_as::<_, PluginInstance>(&sql)
                .bind(new_id())
                .bind(&new.name)
                .bind(&new.plugin_name)
                .bind(&new.plugin_version)
                .bind(Json(&new.settings))
                .bind(new.encrypted_secrets.clone())
                .bind(Json(&new.grants))
                .bind(ts(now))
                .fetch_one(pool)
                .await
                .map_err(|e| StoreError::from_insert(format!("{} {:?}", table.name(), new.name), e))
        })
    }

    async fn get_instance(
        &self,
        table: InstanceTable,
        id: &str,
    ) -> StoreResult<Option<PluginInstance>> {
        let sql = format!("SELECT * FROM {} WHERE id = $1", table.name());
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, PluginInstance>(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Creates an issuer instance.
    pub async fn create_issuer(&self, new: NewPluginInstance) -> StoreResult<PluginInstance> {
        self.create_instance(InstanceTable::Issuers, new).await
    }

    /// One issuer instance by id.
    pub async fn get_issuer(&self, id: &str) -> StoreResult<Option<PluginInstance>> {
        self.get_instance(InstanceTable::Issuers, id).await
    }

    /// Creates a notifier instance.
    pub async fn create_notifier(&self, new: NewPluginInstance) -> StoreResult<PluginInstance> {
        self.create_instance(InstanceTable::Notifiers, new).await
    }

    /// One notifier instance by id.
    pub async fn get_notifier(&self, id: &str) -> StoreResult<Option<PluginInstance>> {
        self.get_instance(InstanceTable::Notifiers, id).await
    }

    /// Creates a target run by `new.agent_id` (which must exist and be
    /// active).
    pub async fn create_target(&self, new: NewTarget) -> StoreResult<Target> {
        let now = now();
        let inst = &new.instance;
        let created = on_write!(self, |pool| {
            sqlx::query_as::<_, Target>(
                "INSERT INTO targets (id, name, agent_id, plugin_name, plugin_version, settings,
                                      encrypted_secrets, grants, created_at, updated_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $9
                 WHERE EXISTS (SELECT 1 FROM agents WHERE id = $3 AND status = 'active')
                 RETURNING *",
            )
            .bind(new_id())
            .bind(&inst.name)
            .bind(&new.agent_id)
            .bind(&inst.plugin_name)
            .bind(&inst.plugin_version)
            .bind(Json(&inst.settings))
            .bind(inst.encrypted_secrets.clone())
            .bind(Json(&inst.grants))
            .bind(ts(now))
            .fetch_optional(pool)
            .await
            .map_err(|e| StoreError::from_insert(format!("target {:?}", inst.name), e))?
        });
        created.ok_or_else(|| StoreError::NotFound {
            entity: "active agent",
            id: new.agent_id.clone(),
        })
    }

    /// One target by id.
    pub async fn get_target(&self, id: &str) -> StoreResult<Option<Target>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Target>("SELECT * FROM targets WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Targets run by an agent (retired ones only if asked), by name.
    pub async fn list_targets_for_agent(
        &self,
        agent_id: &str,
        include_retired: bool,
    ) -> StoreResult<Vec<Target>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Target>(
                "SELECT * FROM targets WHERE agent_id = $1 AND ($2 OR retired_at IS NULL)
                 ORDER BY name, id",
            )
            .bind(agent_id)
            .bind(include_retired)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Retires one target; false if it was already retired or unknown.
    pub async fn retire_target(&self, id: &str, reason: &str) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "UPDATE targets SET retired_at = $2, retired_reason = $3, updated_at = $2
                 WHERE id = $1 AND retired_at IS NULL",
            )
            .bind(id)
            .bind(ts(now))
            .bind(reason)
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        }))
    }
}
