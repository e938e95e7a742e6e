//! certplane connector runtime.
