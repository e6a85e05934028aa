//! From a running job to the CI user(s) it logs in to vCenter as, read on the
//! build cluster: job -> ci-op namespace -> secret named after the target ->
//! user and server fields of the cluster profile files.
//!
//! - [`resolver`]: the lookups on the build cluster, cached per running job.
//! - [`profile`]: the user/server fields of the secret's files (pure parsing).

pub mod profile;
pub mod resolver;

pub use resolver::{IdentityResolver, ResolverOptions, ResolverStats};

/// A vCenter user a job logs in as.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CiIdentity {
    /// Host name of the vCenter (lower case, no scheme or port).
    pub vcenter: String,
    /// Normalised with [`crate::correlate::normalize_username`].
    pub username: String,
}
