//! `select!`: crossbeam-channel's macro shape over
//! `greenstack::sync::select::Select`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, Ident, Pat, Token};

/// One arm of the macro.
enum Arm {
    Recv {
        rx: Expr,
        pat: Pat,
        body: Expr,
    },
    Send {
        tx: Expr,
        value: Expr,
        pat: Pat,
        body: Expr,
    },
    Default {
        timeout: Option<Expr>,
        body: Expr,
        span: Span,
    },
}

struct Input {
    arms: Vec<Arm>,
}

impl Parse for Input {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut arms = Vec::new();
        while !input.is_empty() {
            let kw: Ident = input.parse()?;
            let arm = match kw.to_string().as_str() {
                "recv" => {
                    let args;
                    syn::parenthesized!(args in input);
                    let rx: Expr = args.parse()?;
                    if !args.is_empty() {
                        return Err(args.error("`recv` takes one receiver: `recv(rx) -> v => …`"));
                    }
                    input.parse::<Token![->]>()?;
                    let pat = Pat::parse_single(input)?;
                    input.parse::<Token![=>]>()?;
                    let body = parse_body(input)?;
                    Arm::Recv { rx, pat, body }
                }
                "send" => {
                    let args;
                    syn::parenthesized!(args in input);
                    let tx: Expr = args.parse()?;
                    args.parse::<Token![,]>()?;
                    let value: Expr = args.parse()?;
                    if !args.is_empty() {
                        return Err(args.error(
                            "`send` takes a sender and a value: `send(tx, v) -> res => …`",
                        ));
                    }
                    input.parse::<Token![->]>()?;
                    let pat = Pat::parse_single(input)?;
                    input.parse::<Token![=>]>()?;
                    let body = parse_body(input)?;
                    Arm::Send {
                        tx,
                        value,
                        pat,
                        body,
                    }
                }
                "default" => {
                    let timeout = if input.peek(syn::token::Paren) {
                        let args;
                        syn::parenthesized!(args in input);
                        Some(args.parse::<Expr>()?)
                    } else {
                        None
                    };
                    input.parse::<Token![=>]>()?;
                    let body = parse_body(input)?;
                    Arm::Default {
                        timeout,
                        body,
                        span: kw.span(),
                    }
                }
                other => {
                    return Err(syn::Error::new(
                        kw.span(),
                        format!(
                            "unknown select! case `{other}`: expected `recv(rx) -> v => …`, \
                             `send(tx, value) -> res => …`, `default => …` or \
                             `default(timeout) => …`"
                        ),
                    ))
                }
            };
            arms.push(arm);
        }
        Ok(Input { arms })
    }
}

/// An arm's body: an expression, then a comma unless it is a block (as in
/// `match`) or the last arm.
fn parse_body(input: ParseStream<'_>) -> syn::Result<Expr> {
    let body: Expr = input.parse()?;
    let block_like = matches!(
        body,
        Expr::Block(_)
            | Expr::If(_)
            | Expr::Match(_)
            | Expr::Loop(_)
            | Expr::While(_)
            | Expr::ForLoop(_)
            | Expr::Unsafe(_)
    );
    if input.peek(Token![,]) {
        input.parse::<Token![,]>()?;
    } else if !block_like && !input.is_empty() {
        return Err(input.error("expected `,` after this select! case"));
    }
    Ok(body)
}

pub(crate) fn select(input: TokenStream) -> TokenStream {
    let input: Input = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    let site = Span::mixed_site();
    let mut defaults = input
        .arms
        .iter()
        .filter_map(|a| match a {
            Arm::Default { span, .. } => Some(*span),
            _ => None,
        })
        .skip(1);
    if let Some(span) = defaults.next() {
        return syn::Error::new(span, "select! takes at most one `default` case")
            .to_compile_error();
    }
    let ops = input
        .arms
        .iter()
        .filter(|a| !matches!(a, Arm::Default { .. }))
        .count();
    let default = input.arms.iter().find_map(|a| match a {
        Arm::Default {
            timeout,
            body,
            span,
        } => Some((timeout, body, *span)),
        _ => None,
    });
    if ops == 0 && default.is_none() {
        return quote!(::core::compile_error!(
            "select! needs at least one `recv`, `send` or `default` case"
        ));
    }
    let sel = Ident::new("sel", site);
    let op = Ident::new("op", site);
    let mut binds = Vec::new();
    let mut adds = Vec::new();
    let mut idxs = Vec::new();
    let mut cases = Vec::new();
    for (n, arm) in input.arms.iter().enumerate() {
        let end = format_ident!("end{}", n, span = site);
        let idx = format_ident!("index{}", n, span = site);
        if !matches!(arm, Arm::Default { .. }) {
            idxs.push(idx.clone());
        }
        match arm {
            Arm::Recv { rx, pat, body } => {
                binds.push(quote_spanned!(rx.span()=> let #end = &#rx;));
                adds.push(quote!(let #idx = #sel.recv(#end);));
                cases.push(quote! {
                    #[allow(unused_braces)]
                    ::core::option::Option::Some(#op) if #op.index() == #idx => {
                        let #pat = #op.recv(#end);
                        #body
                    }
                });
            }
            Arm::Send {
                tx,
                value,
                pat,
                body,
            } => {
                binds.push(quote_spanned!(tx.span()=> let #end = &#tx;));
                adds.push(quote!(let #idx = #sel.send(#end);));
                cases.push(quote! {
                    #[allow(unused_braces)]
                    ::core::option::Option::Some(#op) if #op.index() == #idx => {
                        let #pat = #op.send(#end, #value);
                        #body
                    }
                });
            }
            Arm::Default { .. } => {}
        }
    }
    let (pick, none_case) = match default {
        None => (
            quote!(::core::option::Option::Some(#sel.select())),
            quote!(::core::option::Option::None => ::core::unreachable!()),
        ),
        Some((None, body, _)) => (
            quote!(#sel.try_select().ok()),
            quote!(#[allow(unused_braces)] ::core::option::Option::None => #body),
        ),
        Some((Some(timeout), body, _)) => (
            quote!(#sel.select_timeout(#timeout).ok()),
            quote!(#[allow(unused_braces)] ::core::option::Option::None => #body),
        ),
    };
    // The select is dropped where it was built, at the end of its block
    // (a `drop(sel)` moved its 176 bytes first), before the arm's body.
    quote! {{
        #(#binds)*
        let (#op, #(#idxs,)*) = {
            let mut #sel = ::greenstack::sync::select::Select::new();
            #(#adds)*
            (#pick, #(#idxs,)*)
        };
        match #op {
            #(#cases)*
            #none_case,
            #[allow(unreachable_patterns)]
            ::core::option::Option::Some(_) => ::core::unreachable!(),
        }
    }}
}
