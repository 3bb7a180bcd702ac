//! The core's error type and its one mapping to errno (docs/SEMANTICS.md "Errors").
//! Every errno the daemon returns comes from `FsError::errno`; tests/docs.rs checks
//! each one is documented.

use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("permission denied")]
    Access,
    #[error("operation not permitted")]
    Perm,
    #[error("read-only file system")]
    ReadOnly,
    #[error("invalid argument")]
    Invalid,
    #[error("not supported")]
    NotSupported,
    #[error("no such attribute")]
    NoAttr,
    #[error("result too large for the buffer")]
    Range,
    #[error("bad file handle")]
    BadHandle,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name or key too long")]
    NameTooLong,
    #[error("local I/O error")]
    Io,
    #[error("no space left on the cache disk")]
    NoSpace,
    #[error("file too large")]
    TooBig,
    /// The mount's open-file limit (S3 Files: 65,536) is reached.
    #[error("too many open files on this mount")]
    TooManyOpenFiles,
    /// A request the kernel may stop sending (FLUSH, copy_file_range): it falls back.
    #[error("not implemented")]
    Unimplemented,
    #[error("S3: {0}")]
    Store(#[from] StoreError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::Access => libc::EACCES,
            FsError::Perm => libc::EPERM,
            FsError::ReadOnly => libc::EROFS,
            FsError::Invalid => libc::EINVAL,
            FsError::NotSupported => libc::ENOTSUP,
            FsError::NoAttr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::BadHandle => libc::EBADF,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Io => libc::EIO,
            FsError::NoSpace => libc::ENOSPC,
            FsError::TooBig => libc::EFBIG,
            FsError::TooManyOpenFiles => libc::ENFILE,
            FsError::Unimplemented => libc::ENOSYS,
            FsError::Store(e) => store_errno(e),
        }
    }
}

fn store_errno(error: &StoreError) -> i32 {
    match error {
        StoreError::NotFound => libc::ENOENT,
        StoreError::AccessDenied(_)
        | StoreError::BadCredentials(_)
        | StoreError::KeyInaccessible(_) => libc::EACCES,
        // Everything else (throttling and 5xx after retries, an unreachable endpoint, a
        // vanished bucket, an object that changed under an open handle) is an I/O error.
        _ => libc::EIO,
    }
}

impl FsError {
    /// A local I/O error (the staging area, the journal, the cache disk): a full disk
    /// stays ENOSPC (a quota counts as full), a file past the local file system's
    /// limit EFBIG; anything else is EIO.
    pub fn from_io(e: &std::io::Error) -> FsError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
            Some(libc::EFBIG) => FsError::TooBig,
            _ => FsError::Io,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_as_designed() {
        let cases = [
            (StoreError::NotFound, libc::ENOENT),
            (StoreError::AccessDenied(String::new()), libc::EACCES),
            (StoreError::Throttled(String::new()), libc::EIO),
            (StoreError::Unreachable(String::new()), libc::EIO),
            (
                StoreError::Service {
                    status: 500,
                    code: "InternalError".into(),
                    message: String::new(),
                },
                libc::EIO,
            ),
            (StoreError::PreconditionFailed, libc::EIO),
            (StoreError::KeyInaccessible(String::new()), libc::EACCES),
            (StoreError::ObjectArchived(String::new()), libc::EIO),
        ];
        for (error, errno) in cases {
            assert_eq!(FsError::from(error.clone()).errno(), errno, "{error:?}");
        }
    }
}
