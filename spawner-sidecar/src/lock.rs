//! Locking that survives a panic elsewhere: every value behind these
//! mutexes is replaced whole or updated by one map syscall, so a thread that
//! panicked while holding one cannot have left it half-written.
use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
