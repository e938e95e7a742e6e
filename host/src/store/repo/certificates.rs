//! Managed certificates and their issued versions.

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use crate::store::codec::{now, opt_ts, ts};
use crate::store::postgres::creates::Created;
use crate::store::repo::{commit_audited_if, insert_audit};
use crate::store::{
    BeginWrite, Certificate, CertificateStatus, CertificateVersion, KeySource, NewAuditEvent,
    NewCertificate, NewCertificateVersion, Store, StoreError, StoreResult, new_id, on_read,
    on_write,
};

/// The head of a certificate version's INSERT, up to its values: a
/// literal, so `concat!` builds each statement at compile time.
macro_rules! insert_version_columns {
    () => {
        "INSERT INTO certificate_versions (id, certificate_id, serial, pem_chain, \
         not_before, not_after, fingerprint_sha256, encrypted_private_key, job_id, \
         created_at, ca_certificate_id, ca_order_id)"
    };
}
pub(crate) use insert_version_columns;

/// Inserts version `$new` and makes it its certificate's current one, in
/// transaction `$tx` (`&mut Transaction`); `$after_insert` runs between the
/// insert and the certificate's update (fault points). Evaluates to
/// `StoreResult<CertificateVersion>`.
///
/// Two statements when nothing changed under the caller: the INSERT checks
/// the certificate (it exists; a version with a private key is refused for
/// agent keys) in its own WHERE, and the UPDATE checks the renewal window
/// the caller computed `renew_at` with (`new.renew_before_secs`). When
/// either check finds no row, the certificate is read (locked on
/// PostgreSQL) and the step done again with what it holds, so a change
/// between the job's read and its commit is never written over.
macro_rules! record_version {
    ($tx:expr, $lock_suffix:expr, $new:expr, $now:expr, $after_insert:expr) => {{
        let tx = $tx;
        let new: &crate::store::NewCertificateVersion = $new;
        let now = $now;
        async {
            let version_id = crate::store::new_id();
            // `key_checked`: the key source was checked already (the row
            // is locked), insert whenever the certificate exists.
            let insert = |key_checked: bool| {
                sqlx::query_as::<_, crate::store::CertificateVersion>(concat!(
                    crate::store::repo::certificates::insert_version_columns!(),
                    " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12
                     FROM certificates
                     WHERE id = $2 AND (key_source <> 'agent' OR $13)
                     RETURNING *"
                ))
                .bind(&version_id)
                .bind(&new.certificate_id)
                .bind(&new.serial)
                .bind(&new.pem_chain)
                .bind(crate::store::codec::ts(new.not_before))
                .bind(crate::store::codec::ts(new.not_after))
                .bind(&new.fingerprint_sha256)
                .bind(new.encrypted_private_key.clone())
                .bind(new.job_id.clone())
                .bind(crate::store::codec::ts(now))
                .bind(new.ca_certificate_id.clone())
                .bind(new.ca_order_id.clone())
                .bind(key_checked || new.encrypted_private_key.is_none())
            };
            let map_insert = |e: sqlx::Error| {
                crate::store::StoreError::from_insert(
                    "certificate version for this job or fingerprint",
                    e,
                )
            };
            let not_found = || crate::store::StoreError::NotFound {
                entity: "certificate",
                id: new.certificate_id.clone(),
            };
            let lock_suffix: &str = $lock_suffix;
            let read_certificate_sql = format!(
                "SELECT renew_before_secs, key_source FROM certificates WHERE id = $1{lock_suffix}"
            );
            let read_certificate = || {
                sqlx::query_as::<_, (i64, crate::store::KeySource)>(&read_certificate_sql)
                    .bind(&new.certificate_id)
            };
            // The certificate as read under lock: its window, or why this
            // version cannot be recorded.
            let refuse = |cert: Option<&(i64, crate::store::KeySource)>| match cert {
                None => Err(not_found()),
                Some((_, crate::store::KeySource::Agent))
                    if new.encrypted_private_key.is_some() =>
                {
                    Err(crate::store::StoreError::InvalidArgument(
                        "agent-generated private keys are never stored".into(),
                    ))
                }
                Some((renew_before, _)) => Ok(*renew_before),
            };
            let inserted = insert(false)
                .fetch_optional(&mut **tx)
                .await
                .map_err(map_insert)?;
            let version = match inserted {
                Some(version) => version,
                // Missing, or an agent-key certificate: say which.
                None => {
                    let cert = read_certificate().fetch_optional(&mut **tx).await?;
                    refuse(cert.as_ref())?;
                    // Changed between the INSERT and the lock (PostgreSQL):
                    // insert now that the row is locked and checked.
                    insert(true)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(map_insert)?
                        .ok_or_else(not_found)?
                }
            };
            ($after_insert)();
            // Written only while the window is `renew_before` and the key
            // source still takes this version.
            let update = |renew_before: i64| {
                let (renew_at, _) =
                    crate::store::renewal_due_at(new.not_before, new.not_after, renew_before);
                sqlx::query(
                    "UPDATE certificates SET current_version_id = $2, not_after = $3,
                            renew_at = $4, updated_at = $5
                     WHERE id = $1 AND renew_before_secs = $6
                       AND (key_source <> 'agent' OR $7)",
                )
                .bind(&new.certificate_id)
                .bind(&version.id)
                .bind(crate::store::codec::ts(new.not_after))
                .bind(crate::store::codec::ts(renew_at))
                .bind(crate::store::codec::ts(now))
                .bind(renew_before)
                .bind(new.encrypted_private_key.is_none())
            };
            let updated = match new.renew_before_secs {
                Some(assumed) => update(assumed).execute(&mut **tx).await?.rows_affected() == 1,
                None => false,
            };
            if !updated {
                let cert = read_certificate().fetch_optional(&mut **tx).await?;
                let renew_before = refuse(cert.as_ref())?;
                // The row is locked (or, on SQLite, the database is held):
                // nothing can change it between the read and this write.
                update(renew_before).execute(&mut **tx).await?;
            }
            Ok::<_, crate::store::StoreError>(version)
        }
        .await
    }};
}
pub(crate) use record_version;

/// A certificate to create, with its extra targets, options and audit row
/// ([`NewCertificateRow::checked`]).
#[derive(Debug, Clone)]
pub(crate) struct NewCertificateRow {
    pub(crate) new: NewCertificate,
    pub(crate) extra_targets: Vec<String>,
    pub(crate) options: crate::store::CertificateOptions,
    pub(crate) audit: Option<NewAuditEvent>,
    pub(crate) now: DateTime<Utc>,
}

/// What every create checks of the row itself.
fn check_new(new: &NewCertificate) -> StoreResult<()> {
    if new.key_source == KeySource::Agent && new.target_id.is_none() {
        return Err(StoreError::InvalidArgument(
            "a certificate with agent-generated keys needs a key-holding target".into(),
        ));
    }
    if new.renew_before_secs < 0 {
        return Err(StoreError::InvalidArgument(
            "renew_before_secs must be >= 0".into(),
        ));
    }
    Ok(())
}

/// One certificate to create with [`Store::create_certificates`].
#[derive(Debug, Clone)]
pub struct CertificateCreate {
    /// The certificate's row.
    pub new: NewCertificate,
    /// Deployment targets beyond the key-holding `new.target_id`.
    pub extra_targets: Vec<String>,
    /// Options for its issuer and targets.
    pub options: crate::store::CertificateOptions,
    /// Recorded in the same transaction, the new certificate's id as its
    /// subject.
    pub audit: Option<NewAuditEvent>,
}

impl NewCertificateRow {
    /// `create` checked, to be written at `now`.
    pub(crate) fn checked(create: CertificateCreate, now: DateTime<Utc>) -> StoreResult<Self> {
        let new = create.new;
        check_new(&new)?;
        Ok(NewCertificateRow {
            new,
            extra_targets: create.extra_targets,
            options: create.options,
            audit: create.audit,
            now,
        })
    }

    /// The error for an issuer that is missing or retired.
    pub(crate) fn no_issuer(&self) -> StoreError {
        StoreError::InvalidArgument(format!(
            "issuer_id: no issuer {:?} (or it is retired)",
            self.new.issuer_id
        ))
    }
}

/// Inserts the certificate `$create` (`&NewCertificateRow`) and its extra
/// targets in the open write transaction `$tx`, its audit row deferred to
/// `$deferred` (`&mut Deferred`); `$share` locks the issuer row (`" FOR
/// SHARE"` on PostgreSQL). Evaluates to `StoreResult<Option<Certificate>>`:
/// `None`, with nothing written, when the issuer is missing or retired.
macro_rules! insert_certificate {
    ($tx:expr, $create:expr, $share:expr, $deferred:expr) => {
        async {
            let tx = $tx;
            let create: &$crate::store::repo::certificates::NewCertificateRow = $create;
            let deferred: &mut $crate::store::repo::outcomes::Deferred = $deferred;
            let (new, now) = (&create.new, create.now);
            // One statement: the certificate, inserted only while its
            // issuer exists and is not retired (no row: `None`). The
            // issuer's row is share-locked on PostgreSQL so a concurrent
            // retirement waits for this transaction.
            let cert = sqlx::query_as::<_, $crate::store::Certificate>(&format!(
                "INSERT INTO certificates (id, name, common_name, sans, key_type, key_source,
                     issuer_id, target_id, renew_before_secs, owner, status, renew_at,
                     created_at, updated_at, issuer_options, target_options)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', $11, $11, $11,
                        $12, $13
                 FROM issuers WHERE id = $7 AND retired_at IS NULL{}
                 RETURNING *",
                $share
            ))
            .bind($crate::store::new_id())
            .bind(&new.name)
            .bind(&new.common_name)
            .bind(sqlx::types::Json(&new.sans))
            .bind(&new.key_type)
            .bind(new.key_source)
            .bind(&new.issuer_id)
            .bind(new.target_id.clone())
            .bind(new.renew_before_secs)
            .bind(new.owner.clone())
            .bind($crate::store::codec::ts(now))
            .bind(sqlx::types::Json(&create.options.issuer))
            .bind(sqlx::types::Json(&create.options.target))
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| {
                $crate::store::StoreError::from_insert(format!("certificate {:?}", new.name), e)
            })?;
            let Some(cert) = cert else {
                return Ok(None);
            };
            for target in &create.extra_targets {
                sqlx::query(
                    "INSERT INTO certificate_targets (certificate_id, target_id, created_at)
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(&cert.id)
                .bind(target)
                .bind($crate::store::codec::ts(now))
                .execute(&mut **tx)
                .await?;
            }
            if let Some(event) = &create.audit {
                deferred.audit_row(
                    now,
                    $crate::store::NewAuditEvent {
                        subject_id: Some(cert.id.clone()),
                        ..event.clone()
                    },
                );
            }
            Ok::<_, $crate::store::StoreError>(Some(cert))
        }
        .await
    };
}
pub(crate) use insert_certificate;

/// Creates the certificates `$creates` (`&[NewCertificateRow]`) in one
/// transaction on `$pool`, all or none; `$share` as for
/// [`insert_certificate!`]. Evaluates to `StoreResult<Vec<Certificate>>`,
/// in the order given.
macro_rules! create_all {
    ($pool:expr, $creates:expr, $share:expr) => {
        async {
            let creates: &[$crate::store::repo::certificates::NewCertificateRow] = $creates;
            let mut tx = $pool.begin_write().await?;
            let mut deferred = $crate::store::repo::outcomes::Deferred::default();
            let mut certs = Vec::with_capacity(creates.len());
            for create in creates {
                let Some(cert) = $crate::store::repo::certificates::insert_certificate!(
                    &mut tx,
                    create,
                    $share,
                    &mut deferred
                )?
                else {
                    tx.rollback().await?;
                    return Err(create.no_issuer());
                };
                certs.push(cert);
            }
            $crate::store::repo::outcomes::flush_deferred!(&mut tx, deferred)?;
            tx.commit().await?;
            Ok::<_, $crate::store::StoreError>(certs)
        }
        .await
    };
}
pub(crate) use create_all;

/// Creates the certificate `$create` (`&NewCertificateRow`) in a
/// transaction of its own on `$pool`; `$share` as for
/// [`insert_certificate!`]. Evaluates to `StoreResult<Certificate>`.
macro_rules! create_one {
    ($pool:expr, $create:expr, $share:expr) => {
        $crate::store::repo::certificates::create_all!($pool, std::slice::from_ref($create), $share)
            .and_then(|certs| {
                certs.into_iter().next().ok_or_else(|| {
                    $crate::store::StoreError::Database(sqlx::Error::Protocol(
                        "a certificate's INSERT returned no row".into(),
                    ))
                })
            })
    };
}
pub(crate) use create_one;

/// One certificate by id (`$1`).
pub(crate) const GET_CERTIFICATE: &str = "SELECT * FROM certificates WHERE id = $1";
/// One version (`$1`) of a certificate (`$2`).
pub(crate) const GET_CERTIFICATE_VERSION: &str =
    "SELECT * FROM certificate_versions WHERE id = $1 AND certificate_id = $2";

impl Store {
    /// `" FOR UPDATE"` on PostgreSQL, nothing on SQLite (where the write
    /// transaction already holds the database).
    pub(crate) fn row_lock_suffix(&self) -> &'static str {
        match self.backend {
            crate::store::Backend::Sqlite(_) => "",
            crate::store::Backend::Postgres(_) => " FOR UPDATE",
        }
    }

    /// `" FOR SHARE"` on PostgreSQL, nothing on SQLite.
    pub(crate) fn row_share_suffix(&self) -> &'static str {
        match self.backend {
            crate::store::Backend::Sqlite(_) => "",
            crate::store::Backend::Postgres(_) => " FOR SHARE",
        }
    }

    /// Creates a managed certificate. It is due for issuance at once
    /// (`renew_at` = now): the next renewal sweep creates its issuance job.
    pub async fn create_certificate(&self, new: NewCertificate) -> StoreResult<Certificate> {
        check_new(&new)?;
        let now = now();
        on_write!(self, |pool| {
            sqlx::query_as::<_, Certificate>(
                "INSERT INTO certificates (id, name, common_name, sans, key_type, key_source,
                     issuer_id, target_id, renew_before_secs, owner, status, renew_at,
                     created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', $11, $11, $11)
                 RETURNING *",
            )
            .bind(new_id())
            .bind(&new.name)
            .bind(&new.common_name)
            .bind(Json(&new.sans))
            .bind(&new.key_type)
            .bind(new.key_source)
            .bind(&new.issuer_id)
            .bind(new.target_id.clone())
            .bind(new.renew_before_secs)
            .bind(new.owner.clone())
            .bind(ts(now))
            .fetch_one(pool)
            .await
            .map_err(|e| StoreError::from_insert(format!("certificate {:?}", new.name), e))
        })
    }

    /// One certificate by id.
    pub async fn get_certificate(&self, id: &str) -> StoreResult<Option<Certificate>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Certificate>(GET_CERTIFICATE)
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Active certificates whose current version expires before `before`,
    /// soonest first (the expiry loop's query).
    pub async fn list_expiring_certificates(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Certificate>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Certificate>(
                "SELECT * FROM certificates WHERE status = 'active' AND not_after < $1
                 ORDER BY not_after, id LIMIT $2",
            )
            .bind(ts(before))
            .bind(crate::store::repo::sql_limit(limit))
            .fetch_all(pool)
            .await?
        }))
    }

    /// Sets a certificate's status (and `retired_at` with it); false if
    /// unknown.
    pub async fn set_certificate_status(
        &self,
        id: &str,
        status: CertificateStatus,
    ) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "UPDATE certificates SET status = $2, updated_at = $3,
                        retired_at = CASE WHEN $2 = 'retired' THEN COALESCE(retired_at, $3) END
                 WHERE id = $1",
            )
            .bind(id)
            .bind(status)
            .bind(ts(now))
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        }))
    }

    /// Changes a certificate's status, renewal window, owner or options
    /// (each when given; `owner: Some(None)` clears it). A new renewal window moves
    /// `renew_at` with it; becoming active clears `disabled_reason`. Refuses
    /// `Retired` (see [`Store::retire_certificate`]). `None` if unknown,
    /// retired, or (with `unchanged_since`) changed since that `updated_at`.
    /// `audit`, when given, is written in the same transaction, only when
    /// the certificate changed.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_certificate(
        &self,
        id: &str,
        status: Option<CertificateStatus>,
        renew_before_secs: Option<i64>,
        owner: Option<Option<String>>,
        options: Option<&crate::store::CertificateOptions>,
        unchanged_since: Option<DateTime<Utc>>,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<Option<Certificate>> {
        if status == Some(CertificateStatus::Retired) {
            return Err(StoreError::InvalidArgument(
                "retire a certificate with retire_certificate".into(),
            ));
        }
        if renew_before_secs.is_some_and(|s| s < 0) {
            return Err(StoreError::InvalidArgument(
                "renew_before_secs must be >= 0".into(),
            ));
        }
        let now = now();
        let (owner_set, owner) = match owner {
            Some(o) => (true, o),
            None => (false, None),
        };
        on_write!(self, |pool| {
            // Read and write in one write transaction: the new `renew_at`
            // derives from the row as it is.
            let mut tx = pool.begin_write().await?;
            let row = sqlx::query_as::<_, Certificate>("SELECT * FROM certificates WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else { return Ok(None) };
            if unchanged_since.is_some_and(|at| at != row.updated_at) {
                return Ok(None);
            }
            let status = status.unwrap_or(row.status);
            let disabled_reason = match status {
                CertificateStatus::Active => None,
                _ => row.disabled_reason.clone(),
            };
            let renew_before = renew_before_secs.unwrap_or(row.renew_before_secs);
            let renew_at = match (renew_before_secs, row.not_after) {
                (Some(secs), Some(not_after)) => not_after - chrono::Duration::seconds(secs),
                _ => row.renew_at,
            };
            let updated = sqlx::query_as::<_, Certificate>(
                "UPDATE certificates SET status = $2, renew_before_secs = $3, renew_at = $4,
                        owner = $5, updated_at = $6, issuer_options = $7, target_options = $8,
                        disabled_reason = $9
                 WHERE id = $1 AND status <> 'retired' AND ($10 IS NULL OR updated_at = $10)
                 RETURNING *",
            )
            .bind(id)
            .bind(status)
            .bind(renew_before)
            .bind(ts(renew_at))
            .bind(if owner_set { owner } else { row.owner.clone() })
            .bind(ts(now))
            .bind(Json(options.map_or(&row.issuer_options, |o| &o.issuer)))
            .bind(Json(options.map_or(&row.target_options, |o| &o.target)))
            .bind(disabled_reason)
            // Checked again in the write itself: on PostgreSQL another
            // writer may have committed since the read above.
            .bind(opt_ts(unchanged_since))
            .fetch_optional(&mut *tx)
            .await?;
            commit_audited_if!(tx, updated.is_some(), now, audit);
            Ok(updated)
        })
    }

    /// Retires a certificate: no longer managed or renewed, and its jobs
    /// that have not started (pending, waiting for a CSR, an approval or a
    /// retry, polling an order) are cancelled, in one transaction. Running
    /// jobs finish. Returns how many jobs were cancelled, or `None` if the
    /// certificate is unknown or already retired.
    pub async fn retire_certificate(&self, id: &str) -> StoreResult<Option<u64>> {
        self.retire_certificate_audited(id, None).await
    }

    /// [`Store::retire_certificate`] with `audit`, when given, written in
    /// the same transaction with the number of cancelled jobs added to its
    /// details as `cancelled_jobs`; nothing is written when the certificate
    /// is unknown or already retired.
    pub async fn retire_certificate_audited(
        &self,
        id: &str,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<Option<u64>> {
        let now = now();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let retired = sqlx::query(
                "UPDATE certificates SET status = 'retired', retired_at = $2, updated_at = $2
                 WHERE id = $1 AND status <> 'retired'",
            )
            .bind(id)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if retired == 0 {
                return Ok(None);
            }
            let cancelled = sqlx::query(
                "UPDATE jobs SET status = 'cancelled', finished_at = $2, updated_at = $2,
                        lease_owner = NULL, lease_expires_at = NULL,
                        last_error = 'the certificate was retired'
                 WHERE certificate_id = $1
                   AND status IN ('pending', 'awaiting_csr', 'awaiting_approval', 'polling', 'failed')",
            )
            .bind(id)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if let Some(event) = audit {
                let mut event = event.clone();
                if let Some(details) = event.details.as_object_mut() {
                    details.insert("cancelled_jobs".into(), serde_json::json!(cancelled));
                }
                insert_audit!(&mut *tx, now, &event)?;
            }
            tx.commit().await?;
            Ok(Some(cancelled))
        })
    }

    /// Adds a further deployment target to a certificate (idempotent).
    pub async fn add_certificate_target(
        &self,
        certificate_id: &str,
        target_id: &str,
    ) -> StoreResult<()> {
        let now = now();
        on_write!(self, |pool| {
            sqlx::query(
                "INSERT INTO certificate_targets (certificate_id, target_id, created_at)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(certificate_id)
            .bind(target_id)
            .bind(ts(now))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records an issued version and makes it current, in one transaction:
    /// the certificate's `current_version_id`, `not_after` and `renew_at`
    /// (`not_after - renew_before_secs`) follow. Refuses a private key for a
    /// certificate whose keys are agent-generated. (Jobs record versions
    /// with their outcome, [`Store::commit_outcome`].)
    pub async fn record_certificate_version(
        &self,
        new: NewCertificateVersion,
    ) -> StoreResult<CertificateVersion> {
        let now = now();
        let lock_suffix = self.row_lock_suffix();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let version = record_version!(&mut tx, lock_suffix, &new, now, || {})?;
            tx.commit().await?;
            Ok(version)
        })
    }

    /// Versions of a certificate, newest first.
    pub async fn list_certificate_versions(
        &self,
        certificate_id: &str,
    ) -> StoreResult<Vec<CertificateVersion>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, CertificateVersion>(
                "SELECT * FROM certificate_versions WHERE certificate_id = $1
                 ORDER BY created_at DESC, id DESC",
            )
            .bind(certificate_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// One version of certificate `certificate_id` (`None` if it has no
    /// such version): jobs name the version they work on, so they read it
    /// alone rather than every version the certificate ever had.
    pub async fn get_certificate_version(
        &self,
        certificate_id: &str,
        version_id: &str,
    ) -> StoreResult<Option<CertificateVersion>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, CertificateVersion>(GET_CERTIFICATE_VERSION)
                .bind(version_id)
                .bind(certificate_id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Sets `renew_at` directly (tests; the API's "renew now" audits it:
    /// [`Store::set_certificate_renew_at_audited`]). False if unknown.
    pub async fn set_certificate_renew_at(
        &self,
        id: &str,
        renew_at: DateTime<Utc>,
        not_after: Option<DateTime<Utc>>,
    ) -> StoreResult<bool> {
        self.set_certificate_renew_at_audited(id, renew_at, not_after, None)
            .await
    }

    /// [`Store::set_certificate_renew_at`] with `audit`, when given, written
    /// in the same transaction if the certificate exists.
    pub async fn set_certificate_renew_at_audited(
        &self,
        id: &str,
        renew_at: DateTime<Utc>,
        not_after: Option<DateTime<Utc>>,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<bool> {
        let now = now();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let found = sqlx::query(
                "UPDATE certificates SET renew_at = $2, not_after = COALESCE($3, not_after),
                        updated_at = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(ts(renew_at))
            .bind(opt_ts(not_after))
            .bind(ts(now))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if found && let Some(event) = audit {
                insert_audit!(&mut *tx, now, event)?;
            }
            tx.commit().await?;
            Ok(found)
        })
    }

    /// Creates a certificate and its further deployment targets in one
    /// transaction (see [`Store::create_certificate`]); `extra_targets` are
    /// the targets beyond the key-holding `new.target_id`. `audit`, when
    /// given, is recorded in the same transaction with the new
    /// certificate's id as its subject. The issuer must exist and not be
    /// retired ([`StoreError::InvalidArgument`] otherwise); its row is
    /// share-locked on PostgreSQL, so a concurrent
    /// [`Store::retire_issuer`] either sees this certificate or refuses it.
    pub async fn create_certificate_with_targets(
        &self,
        new: NewCertificate,
        extra_targets: &[String],
        options: &crate::store::CertificateOptions,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<Certificate> {
        let create = NewCertificateRow::checked(
            CertificateCreate {
                new,
                extra_targets: extra_targets.to_vec(),
                options: options.clone(),
                audit: audit.cloned(),
            },
            now(),
        )?;
        // On SQLite the create goes through the group committer with the
        // job outcomes: the API's tasks then never hold the single writer
        // across their statements' round trips.
        if let crate::store::Backend::Sqlite(b) = &self.backend
            && let Some(group) = &b.group
        {
            return match group.create_certificate(create).await {
                Ok(result) => {
                    self.counts.write();
                    result
                }
                Err(unsent) => self.create_certificate_alone(&unsent).await,
            };
        }
        self.create_certificate_alone(&create).await
    }

    /// Creates several certificates as [`Store::create_certificate_with_targets`]
    /// does each, in one transaction: all of them or, on the first that
    /// fails (a name taken, an issuer missing or retired), none. Returned in
    /// the order given.
    pub async fn create_certificates(
        &self,
        creates: Vec<CertificateCreate>,
    ) -> StoreResult<Vec<Certificate>> {
        let now = now();
        let rows = creates
            .into_iter()
            .map(|c| NewCertificateRow::checked(c, now))
            .collect::<StoreResult<Vec<_>>>()?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // Straight to the writer, not through SQLite's group committer: a
        // batch is a group of its own already, and one refused row must
        // undo the batch, not only itself.
        if let crate::store::Backend::Postgres(pg) = &self.backend
            && rows.len() > 1
        {
            match crate::store::postgres::creates::create_all(&pg.pool, &rows).await? {
                Created::Written(certs) => {
                    self.counts.write();
                    return Ok(certs);
                }
                Created::NoIssuer(i) => return Err(rows[i].no_issuer()),
                // Row by row below, which names the certificate at fault.
                Created::RowByRow(e) => {
                    tracing::debug!(error = %e, "a set-based create failed; creating row by row")
                }
            }
        }
        let share = self.row_share_suffix();
        on_write!(self, |pool| create_all!(pool, &rows, share))
    }

    /// Creates a certificate in a transaction of its own.
    pub(crate) async fn create_certificate_alone(
        &self,
        create: &NewCertificateRow,
    ) -> StoreResult<Certificate> {
        let share = self.row_share_suffix();
        on_write!(self, |pool| create_one!(pool, create, share))
    }

    /// Certificates by name (retired ones only with `include_retired`),
    /// optionally only those in `status` and/or whose current version
    /// expires before `expiring_before`, one page (`offset`, `limit`).
    pub async fn list_certificates(
        &self,
        include_retired: bool,
        status: Option<CertificateStatus>,
        expiring_before: Option<DateTime<Utc>>,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Vec<Certificate>> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Certificate>(
                "SELECT * FROM certificates
                 WHERE ($1 IS NULL OR status = $1)
                   AND ($2 IS NULL OR (not_after IS NOT NULL AND not_after < $2))
                   AND ($5 OR status <> 'retired')
                 ORDER BY name, id LIMIT $3 OFFSET $4",
            )
            .bind(status)
            .bind(opt_ts(expiring_before))
            .bind(crate::store::repo::sql_limit(limit))
            .bind(offset)
            .bind(include_retired)
            .fetch_all(pool)
            .await?
        }))
    }

    /// How many certificates [`Store::list_certificates`] would list over all
    /// pages.
    pub async fn count_certificates(
        &self,
        include_retired: bool,
        status: Option<CertificateStatus>,
        expiring_before: Option<DateTime<Utc>>,
    ) -> StoreResult<u64> {
        let n: i64 = on_read!(self, |pool| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM certificates
                 WHERE ($1 IS NULL OR status = $1)
                   AND ($2 IS NULL OR (not_after IS NOT NULL AND not_after < $2))
                   AND ($3 OR status <> 'retired')",
            )
            .bind(status)
            .bind(opt_ts(expiring_before))
            .bind(include_retired)
            .fetch_one(pool)
            .await?
        });
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The targets a certificate deploys to: the key-holding one first, then
    /// the further ones in the order they were added.
    pub async fn certificate_target_ids(&self, certificate_id: &str) -> StoreResult<Vec<String>> {
        let rows: Vec<(String,)> = on_read!(self, |pool| {
            sqlx::query_as(
                "SELECT target_id FROM (
                     SELECT target_id, 0 AS ord, created_at FROM certificates
                     WHERE id = $1 AND target_id IS NOT NULL
                     UNION ALL
                     SELECT ct.target_id, 1 AS ord, ct.created_at FROM certificate_targets ct
                     JOIN certificates c ON c.id = ct.certificate_id
                     WHERE ct.certificate_id = $1
                       AND (c.target_id IS NULL OR ct.target_id <> c.target_id)
                 ) t ORDER BY ord, created_at, target_id",
            )
            .bind(certificate_id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// [`Store::certificate_target_ids`] for many certificates in one query
    /// (list pages), keyed by certificate id; certificates without targets
    /// are absent.
    pub async fn certificate_target_ids_many(
        &self,
        certificate_ids: &[String],
    ) -> StoreResult<std::collections::HashMap<String, Vec<String>>> {
        let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
        if certificate_ids.is_empty() {
            return Ok(out);
        }
        let rows: Vec<(String, String)> = on_read!(self, |pool| {
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT certificate_id, target_id FROM (
                     SELECT id AS certificate_id, target_id, 0 AS ord, created_at
                     FROM certificates WHERE target_id IS NOT NULL AND id IN (",
            );
            let mut ids = qb.separated(", ");
            for id in certificate_ids {
                ids.push_bind(id.clone());
            }
            qb.push(
                ") UNION ALL
                 SELECT ct.certificate_id, ct.target_id, 1 AS ord, ct.created_at
                 FROM certificate_targets ct JOIN certificates c ON c.id = ct.certificate_id
                 WHERE (c.target_id IS NULL OR ct.target_id <> c.target_id)
                   AND ct.certificate_id IN (",
            );
            let mut ids = qb.separated(", ");
            for id in certificate_ids {
                ids.push_bind(id.clone());
            }
            qb.push(") ) t ORDER BY certificate_id, ord, created_at, target_id");
            qb.build_query_as().fetch_all(pool).await?
        });
        for (certificate_id, target_id) in rows {
            out.entry(certificate_id).or_default().push(target_id);
        }
        Ok(out)
    }
}
