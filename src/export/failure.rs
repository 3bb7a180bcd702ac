//! Why an export failed for good, named as S3 Files names it: the `ExportError` field of
//! `user.s3files.status` (docs/SEMANTICS.md "Extended attributes"). Each failure gets its
//! code where it happens (a store answer, a pre-check, a local fault, a failed
//! dependency), so nothing is guessed from message text when the status is shown.
//! Retryable errors (throttling, 5xx, an unreachable endpoint) are never export errors:
//! they are retried, and show only as `last-error`.

use std::fmt;

use crate::fs::namespace::MAX_KEY_LEN;
use crate::store::{StoreError, UserMetadata};

/// S3 refuses user metadata larger than this: the sum of the UTF-8 bytes of every key
/// and value.
pub const MAX_USER_METADATA: usize = 2 * 1024;

/// The S3 Files export error codes. s3files never produces `RoleAssumptionFailed` from a
/// role (it assumes none) but uses it for rejected or missing credentials, its one way
/// to reach the bucket; `KeyTooLongToBreakCycle` is never produced (see SEMANTICS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportErrorCode {
    S3AccessDenied,
    InternalError,
    S3UserMetadataTooLarge,
    EncryptionKeyInaccessible,
    RoleAssumptionFailed,
    KeyTooLongToBreakCycle,
    PathTooLong,
    DependencyExportFailed,
    S3ObjectArchived,
}

impl ExportErrorCode {
    pub const ALL: [ExportErrorCode; 9] = [
        ExportErrorCode::S3AccessDenied,
        ExportErrorCode::InternalError,
        ExportErrorCode::S3UserMetadataTooLarge,
        ExportErrorCode::EncryptionKeyInaccessible,
        ExportErrorCode::RoleAssumptionFailed,
        ExportErrorCode::KeyTooLongToBreakCycle,
        ExportErrorCode::PathTooLong,
        ExportErrorCode::DependencyExportFailed,
        ExportErrorCode::S3ObjectArchived,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExportErrorCode::S3AccessDenied => "S3AccessDenied",
            ExportErrorCode::InternalError => "InternalError",
            ExportErrorCode::S3UserMetadataTooLarge => "S3UserMetadataTooLarge",
            ExportErrorCode::EncryptionKeyInaccessible => "EncryptionKeyInaccessible",
            ExportErrorCode::RoleAssumptionFailed => "RoleAssumptionFailed",
            ExportErrorCode::KeyTooLongToBreakCycle => "KeyTooLongToBreakCycle",
            ExportErrorCode::PathTooLong => "PathTooLong",
            ExportErrorCode::DependencyExportFailed => "DependencyExportFailed",
            ExportErrorCode::S3ObjectArchived => "S3ObjectArchived",
        }
    }

    /// The code of a store error that retrying will not fix.
    pub fn of_store_error(error: &StoreError) -> ExportErrorCode {
        match error {
            StoreError::AccessDenied(_) => ExportErrorCode::S3AccessDenied,
            StoreError::KeyInaccessible(_) => ExportErrorCode::EncryptionKeyInaccessible,
            StoreError::ObjectArchived(_) => ExportErrorCode::S3ObjectArchived,
            StoreError::MetadataTooLarge(_) => ExportErrorCode::S3UserMetadataTooLarge,
            StoreError::KeyTooLong(_) => ExportErrorCode::PathTooLong,
            StoreError::BadCredentials(_) | StoreError::NoCredentials(_) => {
                ExportErrorCode::RoleAssumptionFailed
            }
            _ => ExportErrorCode::InternalError,
        }
    }
}

impl fmt::Display for ExportErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failure that retrying will not fix: its code, and what happened in words (the
/// status's `last-error`, the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFailure {
    pub code: ExportErrorCode,
    pub message: String,
}

impl ExportFailure {
    pub fn new(code: ExportErrorCode, message: impl Into<String>) -> Self {
        ExportFailure {
            code,
            message: message.into(),
        }
    }

    pub fn store(error: &StoreError) -> Self {
        ExportFailure::new(ExportErrorCode::of_store_error(error), error.to_string())
    }

    /// A fault on this machine (staged bytes missing or unreadable): S3 Files has no
    /// code of its own for it, so it is an internal error.
    pub fn local(message: impl Into<String>) -> Self {
        ExportFailure::new(ExportErrorCode::InternalError, message)
    }
}

impl fmt::Display for ExportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The size S3 counts for user metadata: the UTF-8 bytes of each key and value. Keys
/// are counted without the `x-amz-meta-` prefix, the smallest reading of S3's rule, so
/// the pre-check never refuses what S3 would take (if S3 counts more, its own
/// `MetadataTooLarge` answer maps to the same code).
pub fn user_metadata_size(metadata: &UserMetadata) -> usize {
    metadata.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Checks what S3 would refuse without asking it: a key longer than 1,024 bytes
/// (`PathTooLong`; such a path can exist on the mount when a directory rename makes its
/// descendants' keys too long) and user metadata over 2 KB (`S3UserMetadataTooLarge`).
pub fn pre_check(key: &str, metadata: &UserMetadata) -> Result<(), ExportFailure> {
    if key.len() > MAX_KEY_LEN {
        return Err(ExportFailure::new(
            ExportErrorCode::PathTooLong,
            format!(
                "the key would be {} bytes; S3 keys are at most {MAX_KEY_LEN} (nothing was sent)",
                key.len()
            ),
        ));
    }
    let size = user_metadata_size(metadata);
    if size > MAX_USER_METADATA {
        return Err(ExportFailure::new(
            ExportErrorCode::S3UserMetadataTooLarge,
            format!(
                "user metadata is {size} bytes; S3 takes at most {MAX_USER_METADATA} (nothing was sent)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_print_as_s3_files_names() {
        let names: Vec<String> = ExportErrorCode::ALL.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            names,
            [
                "S3AccessDenied",
                "InternalError",
                "S3UserMetadataTooLarge",
                "EncryptionKeyInaccessible",
                "RoleAssumptionFailed",
                "KeyTooLongToBreakCycle",
                "PathTooLong",
                "DependencyExportFailed",
                "S3ObjectArchived",
            ]
        );
    }

    #[test]
    fn store_errors_map_to_codes() {
        let cases = [
            (
                StoreError::AccessDenied("no".into()),
                ExportErrorCode::S3AccessDenied,
            ),
            (
                StoreError::KeyInaccessible("kms".into()),
                ExportErrorCode::EncryptionKeyInaccessible,
            ),
            (
                StoreError::ObjectArchived("glacier".into()),
                ExportErrorCode::S3ObjectArchived,
            ),
            (
                StoreError::MetadataTooLarge(String::new()),
                ExportErrorCode::S3UserMetadataTooLarge,
            ),
            (
                StoreError::KeyTooLong(String::new()),
                ExportErrorCode::PathTooLong,
            ),
            (
                StoreError::BadCredentials("InvalidAccessKeyId".into()),
                ExportErrorCode::RoleAssumptionFailed,
            ),
            (
                StoreError::Service {
                    status: 400,
                    code: "InvalidArgument".into(),
                    message: String::new(),
                },
                ExportErrorCode::InternalError,
            ),
            (StoreError::NoSuchBucket, ExportErrorCode::InternalError),
        ];
        for (error, code) in cases {
            assert_eq!(ExportErrorCode::of_store_error(&error), code, "{error:?}");
        }
    }

    #[test]
    fn pre_check_refuses_long_keys_and_large_metadata() {
        let small: UserMetadata = [("file-owner".to_string(), "0".to_string())].into();
        assert_eq!(pre_check(&"k".repeat(MAX_KEY_LEN), &small), Ok(()));
        let long = pre_check(&"k".repeat(MAX_KEY_LEN + 1), &small).unwrap_err();
        assert_eq!(long.code, ExportErrorCode::PathTooLong);
        // Exactly 2 KB is fine, one byte more is not; keys count as well as values,
        // multi-byte characters by their UTF-8 length.
        let at_limit: UserMetadata = [("k".to_string(), "v".repeat(MAX_USER_METADATA - 1))].into();
        assert_eq!(user_metadata_size(&at_limit), MAX_USER_METADATA);
        assert_eq!(pre_check("key", &at_limit), Ok(()));
        let over: UserMetadata = [
            ("k".to_string(), "v".repeat(MAX_USER_METADATA - 2)),
            ("é".to_string(), String::new()),
        ]
        .into();
        assert_eq!(user_metadata_size(&over), MAX_USER_METADATA + 1);
        let refused = pre_check("key", &over).unwrap_err();
        assert_eq!(refused.code, ExportErrorCode::S3UserMetadataTooLarge);
    }
}
