//! Typed rows and inputs of the repository. Rows (`Job`, `Agent`, ...) are
//! what the repository returns; `New*` structs are what callers pass to
//! create rows. Statuses and types are enums stored as TEXT.

mod agent;
mod audit;
mod certificate;
mod job;
mod notification;
mod plugin;

pub use agent::{
    Agent, AgentDependencies, AgentStatus, HeartbeatOutcome, NewAgent, RetireAgent, RetireOutcome,
    SENTINEL_AGENT_ID,
};
pub use audit::{
    API_KEY_USE_PRECISION, ActorType, ApiKey, ApiKeyRevocation, ApiKeyStatus, ApiScope, AuditEvent,
    NewApiKey, NewAuditEvent,
};
pub use certificate::{
    Certificate, CertificateOptions, CertificateStatus, CertificateVersion, KeySource,
    NewCertificate, NewCertificateVersion, renewal_due_at,
};
pub use job::{Job, JobFailure, JobFilter, JobLease, JobStatus, JobType, JobUpdate, NewJob};
pub use notification::{
    CancelledNotifications, NewNotification, Notification, NotificationLease, NotificationStatus,
};
pub use plugin::{InstanceTable, NewPluginInstance, NewTarget, PluginInstance, Target};
