//! SQLite's memory: the process's Rust allocator, without SQLite's own
//! memory statistics.
//!
//! Left to itself, the bundled SQLite allocates with the C library's
//! `malloc` and counts every allocation under a global mutex
//! (`SQLITE_CONFIG_MEMSTATUS`, on by default). A profile of the single
//! writer's thread in a 10,000-certificate run put glibc's `malloc`,
//! `free` and their consolidation at about 10 % of that thread, and the
//! mutexes at 6 % (BENCHMARKS.md, issue 13); the `certplane` binary
//! allocates with jemalloc, whose per-thread caches make the same calls
//! cheap. SQLite's `sqlite3_mem_methods` interface is small and fixed, so
//! it is adapted here rather than through a crate; nothing in the host
//! reads SQLite's memory statistics or sets its soft heap limit, the two
//! things the statistics serve.
//!
//! Both settings are process-wide and only take before SQLite's first
//! use in the process: [`configure`] runs once, before the store's first
//! connection, and leaves SQLite as it is if something opened a database
//! earlier.

use std::alloc::Layout;
use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

/// Bytes before each allocation holding its size (what `xSize` and `xFree`
/// need); also the alignment, at least the 8 bytes SQLite asks for.
const HEADER: usize = 16;

/// The layout of an allocation of `n` bytes for SQLite, header included.
fn layout(n: usize) -> Option<Layout> {
    Layout::from_size_align(n.checked_add(HEADER)?, HEADER).ok()
}

/// Writes the size into the header at `base` and returns what SQLite gets.
///
/// # Safety
/// `base` is null or an allocation of `layout(n)`.
unsafe fn hand_out(base: *mut u8, n: usize) -> *mut c_void {
    if base.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the allocation starts with HEADER bytes, aligned to HEADER.
    unsafe {
        base.cast::<usize>().write(n);
        base.add(HEADER).cast()
    }
}

/// The allocation's start and size for a pointer SQLite was handed.
///
/// # Safety
/// `p` came from [`x_malloc`] or [`x_realloc`] and was not freed.
unsafe fn header(p: *mut c_void) -> (*mut u8, usize) {
    // SAFETY: `p` is HEADER bytes into an allocation whose first word is
    // its size.
    unsafe {
        let base = p.cast::<u8>().sub(HEADER);
        (base, base.cast::<usize>().read())
    }
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Ok(n) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    let Some(layout) = layout(n) else {
        return std::ptr::null_mut();
    };
    // SAFETY: the layout has a non-zero size (the header).
    unsafe { hand_out(std::alloc::alloc(layout), n) }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: SQLite frees only what its xMalloc or xRealloc returned.
    unsafe {
        let (base, n) = header(p);
        if let Some(layout) = layout(n) {
            std::alloc::dealloc(base, layout);
        }
    }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: as x_malloc.
        return unsafe { x_malloc(n) };
    }
    let Ok(n) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    let Some(new_layout) = layout(n) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `p` is live (SQLite's contract) and was allocated with
    // `layout(old)`; the new size is non-zero and makes a valid layout of
    // the same alignment (`new_layout`).
    unsafe {
        let (base, old) = header(p);
        let Some(old_layout) = layout(old) else {
            return std::ptr::null_mut();
        };
        hand_out(std::alloc::realloc(base, old_layout, new_layout.size()), n)
    }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: as x_free.
    let (_, n) = unsafe { header(p) };
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    // SQLite's own default rounds to 8 as well.
    n.checked_add(7).map_or(n, |m| m & !7)
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Gives SQLite the Rust allocator and turns its memory statistics off,
/// once per process, before the first connection. Returns whether SQLite
/// took both (not if it was already in use).
pub(crate) fn configure() -> bool {
    static TAKEN: OnceLock<bool> = OnceLock::new();
    *TAKEN.get_or_init(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: sqlite3_config is to be called before sqlite3_initialize
        // and from one thread; the OnceLock serialises the store's calls,
        // and SQLite answers SQLITE_MISUSE (changing nothing) once it is
        // initialised. It copies `methods`.
        let taken = unsafe {
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int) == ffi::SQLITE_OK
                && ffi::sqlite3_config(
                    ffi::SQLITE_CONFIG_MALLOC,
                    &methods as *const ffi::sqlite3_mem_methods,
                ) == ffi::SQLITE_OK
        };
        if !taken {
            tracing::debug!(
                "SQLite was in use before the store opened; it keeps its own allocator"
            );
        }
        taken
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_methods_keep_sizes_and_contents() {
        // SAFETY: each pointer is used as the methods' contract allows.
        unsafe {
            assert!(x_malloc(-1).is_null());
            let p = x_malloc(100).cast::<u8>();
            assert!(!p.is_null());
            assert_eq!(p as usize % 8, 0, "8-byte aligned");
            assert_eq!(x_size(p.cast()), 100);
            for i in 0..100 {
                p.add(i).write(i as u8);
            }
            let q = x_realloc(p.cast(), 5000).cast::<u8>();
            assert_eq!(x_size(q.cast()), 5000);
            assert!((0..100).all(|i| q.add(i).read() == i as u8));
            let r = x_realloc(q.cast(), 10).cast::<u8>();
            assert_eq!(x_size(r.cast()), 10);
            assert!((0..10).all(|i| r.add(i).read() == i as u8));
            x_free(r.cast());
            x_free(std::ptr::null_mut());
            assert_eq!(x_size(std::ptr::null_mut()), 0);
            assert_eq!(x_roundup(13), 16);
            assert_eq!(x_roundup(16), 16);
        }
    }

    /// The store's first connection hands SQLite this allocator and turns
    /// its statistics off (SQLite then counts no memory at all), and
    /// SQLite works on it: rows small and large (a megabyte each, so
    /// SQLite reallocates as it builds them) written and read back.
    #[tokio::test]
    async fn the_store_gives_sqlite_this_allocator() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let store = crate::store::Store::connect(&url).await.unwrap();
        assert!(configure(), "SQLite took the allocator");
        let pool = match &store.backend {
            crate::store::Backend::Sqlite(b) => b.writer.clone(),
            crate::store::Backend::Postgres(_) => unreachable!(),
        };
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .execute(&pool)
            .await
            .unwrap();
        for i in 0..64_i64 {
            let size = if i % 8 == 0 { 1 << 20 } else { 100 };
            let value: Vec<u8> = (0..size).map(|j| (j as i64 + i) as u8).collect();
            sqlx::query("INSERT INTO t (id, v) VALUES (?, ?)")
                .bind(i)
                .bind(&value)
                .execute(&pool)
                .await
                .unwrap();
        }
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT id, v FROM t ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(rows.len(), 64);
        for (i, v) in rows {
            let size = if i % 8 == 0 { 1 << 20 } else { 100 };
            assert_eq!(v.len(), size);
            assert!(
                v.iter()
                    .enumerate()
                    .all(|(j, b)| *b == (j as i64 + i) as u8)
            );
        }
        // SAFETY: a plain read of SQLite's counters.
        assert_eq!(unsafe { ffi::sqlite3_memory_used() }, 0, "statistics off");
    }
}
