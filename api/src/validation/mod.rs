//! Validation the OpenAPI schema cannot express, shared by the admission
//! webhook (which answers `kubectl apply`) and the agent (which must not
//! trust its caller either). Every message names the field.

use std::fmt;

mod agent_request;
mod fields;
mod pool;
mod sandbox;
#[cfg(test)]
mod tests;

pub use agent_request::{MAX_EXEC_TIMEOUT_SECONDS, validate_create_request, validate_exec_request};
pub use fields::{
    MAX_CPU_MILLIS, MAX_EPHEMERAL_STORAGE_BYTES, MAX_EXEC_BYTES, MAX_MEMORY_BYTES, MAX_PIDS,
    MAX_WORKING_DIR_BYTES, MIN_CPU_MILLIS, MIN_EPHEMERAL_STORAGE_BYTES, MIN_MEMORY_BYTES,
    is_dns1123_subdomain, is_env_name,
};
pub use pool::validate_pool_spec;
pub use sandbox::{
    MAX_TERMINATION_GRACE_SECONDS, MAX_TTL_SECONDS, limits_of, validate_sandbox_spec,
};

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.env[2].name`.
    pub field: String,
    /// Why it is invalid.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All invalid fields of an object, so a user fixes them in one round.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl FieldErrors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The first error, if any.
    pub fn first(&self) -> Option<&FieldError> {
        self.0.first()
    }
}
