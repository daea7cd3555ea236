//! Empty library target: lets shield-user list this crate as a build-dependency, so cargo
//! rebuilds the embedded XDP object when it changes. The program itself is `src/main.rs`.
#![no_std]
