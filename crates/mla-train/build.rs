// Same rpath logic as the model crate (see there): one copy, included.
include!("../mla-model/build.rs");
