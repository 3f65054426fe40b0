pub mod encode;
pub mod inspect;
