//! A forward-only cursor over one prepared statement, through SQLite's C API.
//!
//! A replay reads every column of a million rows. Through rusqlite each text column costs four
//! calls into SQLite (the column count to check the index, the type, the text, the length)
//! and a UTF-8 check: 42 calls a row, a third of the replay reader's time. Here a text column
//! is two calls (`sqlite3_column_text`, `sqlite3_column_bytes`) and its bytes are handed out as
//! they are: the caller checks UTF-8 only where it needs a `str`.

use std::ffi::{c_int, CStr};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use rusqlite::{ffi, Connection};

/// A statement prepared on `conn`, with its one integer parameter bound, stepped row by row.
pub(super) struct Cursor<'c> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: *mut ffi::sqlite3,
    /// The statement lives on the connection: it must not outlive it.
    _conn: PhantomData<&'c Connection>,
}

/// The row the cursor stands on; its bytes are SQLite's, valid until the next step.
pub(super) struct RawRow<'s> {
    stmt: *mut ffi::sqlite3_stmt,
    _cursor: PhantomData<&'s mut Cursor<'s>>,
}

impl<'c> Cursor<'c> {
    /// Prepares `sql` on `conn` and binds `param` to its `?1`.
    pub(super) fn new(conn: &'c Connection, sql: &str, param: i64) -> rusqlite::Result<Self> {
        // SAFETY: the handle is the live connection `conn`, borrowed for the cursor's life;
        // `Connection` is not `Sync`, so no other thread uses it meanwhile.
        let db = unsafe { conn.handle() };
        let mut stmt = ptr::null_mut();
        let len = c_int::try_from(sql.len()).map_err(|_| rusqlite::Error::InvalidQuery)?;
        // SAFETY: `sql` is valid for `len` bytes (no NUL terminator is needed with a length);
        // `stmt` is written by SQLite.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(db, sql.as_ptr().cast(), len, &mut stmt, ptr::null_mut())
        };
        if rc != ffi::SQLITE_OK {
            return Err(error(db, rc));
        }
        let stmt = NonNull::new(stmt).ok_or(rusqlite::Error::InvalidQuery)?;
        let cursor = Cursor {
            stmt,
            db,
            _conn: PhantomData,
        };
        // SAFETY: a freshly prepared statement, not yet stepped.
        let rc = unsafe { ffi::sqlite3_bind_int64(cursor.stmt.as_ptr(), 1, param) };
        if rc != ffi::SQLITE_OK {
            return Err(error(db, rc));
        }
        Ok(cursor)
    }

    /// Steps to the next row; `None` once the statement is done.
    pub(super) fn next(&mut self) -> rusqlite::Result<Option<RawRow<'_>>> {
        // SAFETY: the statement is live until `drop`; `&mut self` ends the borrows of the row
        // before, whose bytes this step invalidates.
        match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(Some(RawRow {
                stmt: self.stmt.as_ptr(),
                _cursor: PhantomData,
            })),
            ffi::SQLITE_DONE => Ok(None),
            rc => Err(error(self.db, rc)),
        }
    }
}

impl Drop for Cursor<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared by `new` and is finalized once, here.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

impl<'s> RawRow<'s> {
    /// Column `i` if it holds an integer (no conversion from another type).
    pub(super) fn integer(&self, i: c_int) -> Option<i64> {
        // SAFETY: the statement stands on a row; an index out of range gives NULL, not UB.
        unsafe {
            (ffi::sqlite3_column_type(self.stmt, i) == ffi::SQLITE_INTEGER)
                .then(|| ffi::sqlite3_column_int64(self.stmt, i))
        }
    }

    /// The bytes of column `i` as text; `None` when it is NULL.
    pub(super) fn text(&self, i: c_int) -> rusqlite::Result<Option<&'s [u8]>> {
        // SAFETY: the statement stands on a row. SQLite's text pointer is valid until the next
        // step or finalize, both of which need `&mut Cursor`, which `'s` borrows; the length is
        // asked after the text, as SQLite documents.
        unsafe {
            let text = ffi::sqlite3_column_text(self.stmt, i);
            if text.is_null() {
                // NULL, or SQLite could not allocate the text of another type.
                return match ffi::sqlite3_column_type(self.stmt, i) {
                    ffi::SQLITE_NULL => Ok(None),
                    _ => Err(error(ffi::sqlite3_db_handle(self.stmt), ffi::SQLITE_NOMEM)),
                };
            }
            let len = ffi::sqlite3_column_bytes(self.stmt, i);
            Ok(Some(std::slice::from_raw_parts(
                text,
                usize::try_from(len).unwrap_or(0),
            )))
        }
    }
}

/// The error of `rc` on `db`, with SQLite's message.
fn error(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Error {
    // SAFETY: `db` is a live connection; its message is copied before any other call on it.
    let message = unsafe {
        let text = ffi::sqlite3_errmsg(db);
        (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), message)
}
