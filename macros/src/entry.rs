//! The logic of the macros: parsing options, checking the item, expanding.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprClosure, Ident, ItemFn, ReturnType, Token};

/// Which attribute is being expanded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Main,
    Test,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Main => "greenstack::main",
            Kind::Test => "greenstack::test",
        }
    }
}

/// `name = value`.
struct Opt {
    name: Ident,
    value: Expr,
}

impl Parse for Opt {
    fn parse(input: ParseStream<'_>) -> syn::Result<Opt> {
        let name: Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        Ok(Opt { name, value })
    }
}

/// Options of `#[main]`/`#[test]`, validated.
#[derive(Default)]
struct EntryOpts {
    workers: Option<Expr>,
    stack_size: Option<Expr>,
}

const ENTRY_OPTIONS: &str = "`workers = N` and `stack_size = EXPR`";

fn parse_entry_opts(args: TokenStream, kind: Kind) -> syn::Result<EntryOpts> {
    let opts = Punctuated::<Opt, Token![,]>::parse_terminated
        .parse2(args)
        .map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("{e}; #[{}] accepts {ENTRY_OPTIONS}", kind.name()),
            )
        })?;
    let mut out = EntryOpts::default();
    for o in opts {
        let slot = match o.name.to_string().as_str() {
            "workers" => &mut out.workers,
            "stack_size" => &mut out.stack_size,
            other => {
                return Err(syn::Error::new(
                    o.name.span(),
                    format!(
                        "unknown option `{other}`; #[{}] accepts {ENTRY_OPTIONS}",
                        kind.name()
                    ),
                ))
            }
        };
        if slot.is_some() {
            return Err(syn::Error::new(
                o.name.span(),
                format!("option `{}` given twice", o.name),
            ));
        }
        *slot = Some(o.value);
    }
    Ok(out)
}

/// Expands `#[main]` or `#[test]`. On error: the item unchanged plus a
/// `compile_error!`, so the rest of the crate still type-checks.
pub(crate) fn entry(args: TokenStream, item: TokenStream, kind: Kind) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                format!("#[{}] goes on a function: {e}", kind.name()),
            );
            return with_error(item, e);
        }
    };
    match expand_entry(args, &func, kind) {
        Ok(ts) => ts,
        Err(e) => with_error(func.to_token_stream(), e),
    }
}

fn with_error(item: TokenStream, e: syn::Error) -> TokenStream {
    let err = e.to_compile_error();
    quote! { #item #err }
}

fn expand_entry(args: TokenStream, func: &ItemFn, kind: Kind) -> syn::Result<TokenStream> {
    let opts = parse_entry_opts(args, kind)?;
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(
            a.span(),
            format!(
                "#[{}] takes a plain `fn`: coroutines block instead of awaiting; remove `async`",
                kind.name()
            ),
        ));
    }
    if let Some(arg) = sig.inputs.first() {
        return Err(syn::Error::new(
            arg.span(),
            format!("#[{}] functions take no arguments", kind.name()),
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("#[{}] functions cannot be generic", kind.name()),
        ));
    }
    if kind == Kind::Main && sig.ident != "main" {
        return Err(syn::Error::new(
            sig.ident.span(),
            "#[greenstack::main] goes on `fn main`; use #[greenstack::test] for tests",
        ));
    }
    let attrs = &func.attrs;
    let vis = &func.vis;
    let ident = &sig.ident;
    let output = &sig.output;
    let body = &func.block;
    let workers = opts
        .workers
        .map(|w| quote_spanned!(w.span()=> .workers(#w)));
    let stack = opts
        .stack_size
        .map(|s| quote_spanned!(s.span()=> .stack_size(#s)));
    let closure_ret = match output {
        ReturnType::Default => quote!(),
        ReturnType::Type(arrow, ty) => quote!(#arrow #ty),
    };
    if kind == Kind::Main {
        // `main`'s body runs as an ordinary coroutine on a worker (see
        // `Runtime::block_on_worker`): it captures nothing, so the closure
        // is `Send` whatever the body holds, and its value is turned into
        // an `ExitCode` there (`Termination::report`, what std's `main`
        // does: an `Err` is printed as "Error: {err:?}", exit status 1), so
        // a value that is not `Send` (a `Box<dyn Error>`) never crosses
        // threads.
        let ty = match output {
            ReturnType::Default => quote!(()),
            ReturnType::Type(_, ty) => quote!(#ty),
        };
        let report = quote_spanned! {output.span()=>
            <#ty as ::std::process::Termination>::report(__greenstack_value)
        };
        return Ok(quote! {
            #(#attrs)*
            #vis fn #ident() -> ::std::process::ExitCode {
                let __greenstack_runtime = ::greenstack::Runtime::builder()
                    #workers
                    #stack
                    .build()
                    .unwrap_or_else(|e| ::core::panic!("greenstack: cannot start the runtime: {}", e));
                __greenstack_runtime.block_on_worker(move || {
                    let __greenstack_value = (move || #closure_ret #body)();
                    #report
                })
            }
        });
    }
    let test_attr = quote!(#[::core::prelude::v1::test]);
    Ok(quote! {
        #test_attr
        #(#attrs)*
        #vis fn #ident() #output {
            let __greenstack_runtime = ::greenstack::Runtime::builder()
                #workers
                #stack
                .build()
                .unwrap_or_else(|e| ::core::panic!("greenstack: cannot start the runtime: {}", e));
            __greenstack_runtime.block_on(move || #closure_ret #body)
        }
    })
}

/// `spawn!` input: options, then the closure.
struct SpawnInput {
    opts: Vec<Opt>,
    closure: ExprClosure,
}

const SPAWN_OPTIONS: &str = "`name = EXPR` and `stack_size = EXPR`, then a closure";

impl Parse for SpawnInput {
    fn parse(input: ParseStream<'_>) -> syn::Result<SpawnInput> {
        let mut opts = Vec::new();
        loop {
            if input.is_empty() {
                return Err(syn::Error::new(
                    Span::call_site(),
                    format!("spawn! needs a closure to run, e.g. `spawn!(|| work())`; it accepts {SPAWN_OPTIONS}"),
                ));
            }
            if input.peek(Ident) && input.peek2(Token![=]) && !input.peek2(Token![==]) {
                let o: Opt = input.parse()?;
                match o.name.to_string().as_str() {
                    "name" | "stack_size" => {}
                    other => {
                        return Err(syn::Error::new(
                            o.name.span(),
                            format!("unknown option `{other}`; spawn! accepts {SPAWN_OPTIONS}"),
                        ))
                    }
                }
                if opts.iter().any(|p: &Opt| p.name == o.name) {
                    return Err(syn::Error::new(
                        o.name.span(),
                        format!("option `{}` given twice", o.name),
                    ));
                }
                opts.push(o);
                input.parse::<Token![,]>().map_err(|e| {
                    syn::Error::new(e.span(), format!("expected `,` and then more options or the closure; spawn! accepts {SPAWN_OPTIONS}"))
                })?;
                continue;
            }
            let expr: Expr = input.parse()?;
            let Expr::Closure(closure) = expr else {
                return Err(syn::Error::new(
                    expr.span(),
                    format!("spawn! runs a closure, e.g. `spawn!(move || work())`; it accepts {SPAWN_OPTIONS}"),
                ));
            };
            if !closure.inputs.is_empty() {
                return Err(syn::Error::new(
                    closure.inputs.span(),
                    "the closure given to spawn! takes no arguments",
                ));
            }
            let _ = input.parse::<Option<Token![,]>>()?;
            if !input.is_empty() {
                return Err(
                    input.error("unexpected tokens after the closure; the closure comes last")
                );
            }
            return Ok(SpawnInput { opts, closure });
        }
    }
}

/// Expands `spawn!`.
pub(crate) fn spawn(input: TokenStream) -> TokenStream {
    let parsed: SpawnInput = match syn::parse2(input) {
        Ok(p) => p,
        Err(e) => return e.to_compile_error(),
    };
    let setters = parsed.opts.iter().map(|o| {
        let (name, value) = (&o.name, &o.value);
        quote_spanned!(value.span()=> .#name(#value))
    });
    let closure = &parsed.closure;
    quote! {
        ::greenstack::Builder::new()
            #(#setters)*
            .spawn(#closure)
            .unwrap_or_else(|e| ::core::panic!("greenstack: cannot spawn: {}", e))
    }
}
