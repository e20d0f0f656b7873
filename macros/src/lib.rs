//! The `#[multiprocess::main]` attribute: makes `main` call `multiprocess::init()` first.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, ItemFn};

/// Inserts `::multiprocess::init();` as the first statement of the function.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[multiprocess::main] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let mut f = parse_macro_input!(item as ItemFn);
    let init: syn::Stmt = syn::parse_quote!(::multiprocess::init(););
    f.block.stmts.insert(0, init);
    quote!(#f).into()
}
