pub mod ablate;
pub mod bench;
pub mod encode;
pub mod eval;
pub mod inspect;
pub mod prepare;
pub mod train;
