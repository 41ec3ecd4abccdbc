//! The `#[plugin]` attribute of `tollgate-sdk` (use it as `tollgate_sdk::plugin`).
//!
//! It goes on a plugin's `impl Plugin for T` block, keeps the block as written, and adds what
//! the gateway reads: the phases the plugin handles, which are exactly the phase methods the
//! block implements, and the component export. There is nothing to list by hand, so a phase
//! method cannot be implemented and then skipped because a list forgot it.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Error, ImplItem, ItemImpl, parse_macro_input};

/// The phase methods of `tollgate_sdk::Plugin`, each with its `tollgate_sdk::Phase` variant, in
/// canonical order.
const PHASE_METHODS: [(&str, &str); 7] = [
    ("certificate", "Certificate"),
    ("rewrite", "Rewrite"),
    ("access", "Access"),
    ("balancer", "Balancer"),
    ("header_filter", "HeaderFilter"),
    ("body_filter", "BodyFilter"),
    ("log", "Log"),
];

/// Declares a plugin's phases from the methods its `impl Plugin for T` block implements and
/// exports it as the component's `tollgate:plugin/handler`. See `tollgate_sdk` for an example.
#[proc_macro_attribute]
pub fn plugin(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        let args = proc_macro2::TokenStream::from(args);
        return Error::new(args.span(), "#[plugin] takes no arguments")
            .to_compile_error()
            .into();
    }
    let block = parse_macro_input!(item as ItemImpl);
    match expand(&block) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(block: &ItemImpl) -> syn::Result<proc_macro2::TokenStream> {
    check_shape(block)?;
    let phases = implemented_phases(block)?;
    if phases.is_empty() {
        return Err(Error::new(
            block.self_ty.span(),
            "a plugin must implement at least one phase method \
             (certificate, rewrite, access, balancer, header_filter, body_filter or log)",
        ));
    }
    let plugin = &block.self_ty;
    let variants = phases.iter().map(|variant| format_ident!("{variant}"));
    Ok(quote! {
        #block

        impl ::tollgate_sdk::__private::Declared for #plugin {
            const PHASES: &'static [::tollgate_sdk::Phase] =
                &[#(::tollgate_sdk::Phase::#variants),*];
        }

        ::tollgate_sdk::__private::export_plugin!(#plugin);
    })
}

/// The block must be `impl Plugin for T` (any path ending in `Plugin`), for one concrete type.
fn check_shape(block: &ItemImpl) -> syn::Result<()> {
    let is_plugin = block.trait_.as_ref().is_some_and(|(negated, path, _)| {
        negated.is_none() && path.segments.last().is_some_and(|s| s.ident == "Plugin")
    });
    if !is_plugin {
        return Err(Error::new(
            block.impl_token.span,
            "#[plugin] goes on an `impl Plugin for YourType` block",
        ));
    }
    if !block.generics.params.is_empty() {
        return Err(Error::new(
            block.generics.span(),
            "a plugin is exported as one concrete type: #[plugin] takes no generic impl",
        ));
    }
    Ok(())
}

/// The `Phase` variants of the phase methods the block implements, in canonical order.
fn implemented_phases(block: &ItemImpl) -> syn::Result<Vec<&'static str>> {
    let mut implemented = Vec::new();
    for item in &block.items {
        match item {
            ImplItem::Fn(method) => implemented.push(method.sig.ident.to_string()),
            ImplItem::Const(constant) if constant.ident == "PHASES" => {
                return Err(Error::new(
                    constant.ident.span(),
                    "a plugin's phases are the phase methods it implements: remove `PHASES`",
                ));
            }
            _ => {}
        }
    }
    if let Some(method) = block.items.iter().find_map(|item| match item {
        ImplItem::Macro(mac) => Some(mac),
        _ => None,
    }) {
        // A macro could expand to phase methods the attribute cannot see.
        return Err(Error::new(
            method.span(),
            "#[plugin] reads the phase methods of the block: write them out, not through a macro",
        ));
    }
    Ok(PHASE_METHODS
        .iter()
        .filter(|(method, _)| implemented.iter().any(|name| name == method))
        .map(|&(_, variant)| variant)
        .collect())
}
