//! A WASI preview 1 adapter for plugins that import only what the Rust standard library's panic
//! path needs (`environ_get` and `environ_sizes_get`, for `RUST_BACKTRACE`; `fd_write`, for the
//! message; `proc_exit`) and what C's stdio adds to it (`fd_seek`, `fd_close`). Componentizing
//! such a module with the standard adapter links in all of WASI preview 1 (its core instances,
//! the shims between it and the module, its imports), which measured 3–4 µs of an instance's
//! 11–14 µs (docs/benchmarks.md). This one is six functions: the environment is empty, as the
//! sandbox's is; `fd_write` on stdout and stderr writes to the same WASI streams the standard
//! adapter would (so the output reaches the log as the plugin's, within its per-call allowance);
//! stdout and stderr cannot seek, and closing them is a no-op; `proc_exit` traps, as exiting in a
//! call does.
//!
//! Each `fd_write` opens its stream and drops it before it returns, so no WASI resource outlives
//! the call and a plugin that writes in `configure` can still be snapshotted.

use std::sync::OnceLock;

use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, Function,
    FunctionSection, GlobalSection, GlobalType, ImportSection, Instruction, MemArg, MemoryType,
    Module, TypeSection, ValType,
};
use wit_component::{StringEncoding, embed_component_metadata};

/// The module name the standard library imports these functions from.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// The preview 1 functions this adapter provides.
pub const PROVIDES: [&str; 6] = [
    "environ_get",
    "environ_sizes_get",
    "fd_write",
    "proc_exit",
    "fd_seek",
    "fd_close",
];

/// The parts of WASI 0.2 the adapter imports (the host provides all of them, at a
/// semver-compatible version), and its world: one package each, in dependency order.
const WIT: [&str; 3] = [
    r#"package wasi:io@0.2.0;
interface error {
    resource error;
}
interface streams {
    use error.{error};
    variant stream-error {
        last-operation-failed(error),
        closed,
    }
    resource output-stream {
        blocking-write-and-flush: func(contents: list<u8>) -> result<_, stream-error>;
    }
}
"#,
    r#"package wasi:cli@0.2.0;
interface stdout {
    use wasi:io/streams@0.2.0.{output-stream};
    get-stdout: func() -> output-stream;
}
interface stderr {
    use wasi:io/streams@0.2.0.{output-stream};
    get-stderr: func() -> output-stream;
}
"#,
    r#"package tollgate:small-adapter;
world adapter {
    import wasi:cli/stdout@0.2.0;
    import wasi:cli/stderr@0.2.0;
}
"#,
];

/// `blocking-write-and-flush` takes at most this many bytes a call.
const MAX_WRITE: i32 = 4096;
/// WASI errno values.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_IO: i32 = 29;
const ERRNO_SPIPE: i32 = 70;

// Function indices: the imports first, in this order, then the adapter's own.
const GET_STDOUT: u32 = 0;
const GET_STDERR: u32 = 1;
const WRITE: u32 = 2;
const DROP_STREAM: u32 = 3;
const DROP_ERROR: u32 = 4;
const REALLOC: u32 = 5;

/// The adapter's bytes (a core module with its component-type metadata), built once.
pub fn bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(build)
}

/// Whether a module whose preview 1 imports are `imports` can use this adapter.
pub fn suffices<'a>(mut imports: impl Iterator<Item = &'a str>) -> bool {
    imports.all(|name| PROVIDES.contains(&name))
}

fn build() -> Vec<u8> {
    let mut module = Module::new();

    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]); // 0: get-stdout, get-stderr
    types.ty().function([ValType::I32; 4], []); // 1: blocking-write-and-flush (self, ptr, len, ret)
    types.ty().function([ValType::I32], []); // 2: resource drops, proc_exit
    types.ty().function([ValType::I32; 4], [ValType::I32]); // 3: cabi_realloc, fd_write
    types.ty().function([ValType::I32; 2], [ValType::I32]); // 4: environ_get, environ_sizes_get
    types.ty().function(
        [ValType::I32, ValType::I64, ValType::I32, ValType::I32],
        [ValType::I32],
    ); // 5: fd_seek
    types.ty().function([ValType::I32], [ValType::I32]); // 6: fd_close
    module.section(&types);

    let mut imports = ImportSection::new();
    imports.import(
        "wasi:cli/stdout@0.2.0",
        "get-stdout",
        EntityType::Function(0),
    );
    imports.import(
        "wasi:cli/stderr@0.2.0",
        "get-stderr",
        EntityType::Function(0),
    );
    let streams = "wasi:io/streams@0.2.0";
    imports.import(
        streams,
        "[method]output-stream.blocking-write-and-flush",
        EntityType::Function(1),
    );
    imports.import(
        streams,
        "[resource-drop]output-stream",
        EntityType::Function(2),
    );
    imports.import(
        "wasi:io/error@0.2.0",
        "[resource-drop]error",
        EntityType::Function(2),
    );
    imports.import("__main_module__", "cabi_realloc", EntityType::Function(3));
    imports.import(
        "env",
        "memory",
        EntityType::Memory(MemoryType {
            minimum: 0,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        }),
    );
    module.section(&imports);

    let mut functions = FunctionSection::new();
    for ty in [4, 4, 3, 2, 5, 6] {
        functions.function(ty);
    }
    module.section(&functions);

    // The return area of `blocking-write-and-flush`, allocated in the module's memory on first
    // use: `result<_, stream-error>` is 12 bytes, aligned to 4.
    let mut globals = GlobalSection::new();
    globals.global(
        GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i32_const(0),
    );
    module.section(&globals);

    let mut exports = ExportSection::new();
    for (index, name) in PROVIDES.iter().enumerate() {
        exports.export(name, ExportKind::Func, REALLOC + 1 + index as u32);
    }
    module.section(&exports);

    let mut code = CodeSection::new();
    code.function(&environ_get());
    code.function(&environ_sizes_get());
    code.function(&fd_write());
    code.function(&proc_exit());
    code.function(&fd_seek());
    code.function(&fd_close());
    module.section(&code);

    let mut bytes = module.finish();
    let mut resolve = wit_parser::Resolve::default();
    let mut package = None;
    for (index, text) in WIT.iter().enumerate() {
        let pushed = resolve
            .push_str(format!("small-adapter-{index}.wit"), text)
            .expect("the adapter's WIT parses");
        package = Some(pushed);
    }
    let package = package.expect("the adapter's world is the last package");
    let world = resolve
        .select_world(&[package], Some("adapter"))
        .expect("the adapter's world exists");
    embed_component_metadata(&mut bytes, &resolve, world, StringEncoding::UTF8)
        .expect("the adapter's metadata embeds");
    bytes
}

fn mem32(offset: u64) -> MemArg {
    MemArg {
        offset,
        align: 2,
        memory_index: 0,
    }
}

fn mem8(offset: u64) -> MemArg {
    MemArg {
        offset,
        align: 0,
        memory_index: 0,
    }
}

/// `environ_get(environ, environ_buf)`: no variables, nothing to write.
fn environ_get() -> Function {
    let mut f = Function::new([]);
    f.instruction(&Instruction::I32Const(ERRNO_SUCCESS));
    f.instruction(&Instruction::End);
    f
}

/// `environ_sizes_get(count, buf_size)`: zero and zero.
fn environ_sizes_get() -> Function {
    let mut f = Function::new([]);
    for param in [0, 1] {
        f.instruction(&Instruction::LocalGet(param));
        f.instruction(&Instruction::I32Const(0));
        f.instruction(&Instruction::I32Store(mem32(0)));
    }
    f.instruction(&Instruction::I32Const(ERRNO_SUCCESS));
    f.instruction(&Instruction::End);
    f
}

/// `proc_exit(code)`: a plugin cannot end the process; the call traps.
fn proc_exit() -> Function {
    let mut f = Function::new([]);
    f.instruction(&Instruction::Unreachable);
    f.instruction(&Instruction::End);
    f
}

/// `fd_seek(fd, offset, whence, newoffset)`: stdout and stderr are streams; nothing else is open.
fn fd_seek() -> Function {
    stdio_or_badf(ERRNO_SPIPE)
}

/// `fd_close(fd)`: stdout and stderr hold nothing between writes, so closing them does nothing;
/// nothing else is open.
fn fd_close() -> Function {
    stdio_or_badf(ERRNO_SUCCESS)
}

/// A function of `fd` (its first parameter) that answers `on_stdio` for stdout and stderr (fds
/// 1 and 2) and `EBADF` for any other descriptor.
fn stdio_or_badf(on_stdio: i32) -> Function {
    let mut f = Function::new([]);
    f.instruction(&Instruction::LocalGet(0));
    f.instruction(&Instruction::I32Const(1));
    f.instruction(&Instruction::I32Sub);
    f.instruction(&Instruction::I32Const(2));
    f.instruction(&Instruction::I32LtU);
    f.instruction(&Instruction::If(BlockType::Result(ValType::I32)));
    f.instruction(&Instruction::I32Const(on_stdio));
    f.instruction(&Instruction::Else);
    f.instruction(&Instruction::I32Const(ERRNO_BADF));
    f.instruction(&Instruction::End);
    f.instruction(&Instruction::End);
    f
}

/// `fd_write(fd, iovs, iovs_len, nwritten)`: every buffer, in chunks the stream takes, to
/// stdout (fd 1) or stderr (fd 2); `EBADF` for any other descriptor, `EIO` when the stream
/// fails before anything was written.
fn fd_write() -> Function {
    use Instruction as I;
    // Parameters 0–3; locals from 4.
    let (fd, iovs, iovs_len, nwritten) = (0, 1, 2, 3);
    let (stream, i, buf, len, chunk, total, ret, errno) = (4, 5, 6, 7, 8, 9, 10, 11);
    let mut f = Function::new([(8, ValType::I32)]);

    // The stream.
    f.instruction(&I::LocalGet(fd));
    f.instruction(&I::I32Const(1));
    f.instruction(&I::I32Eq);
    f.instruction(&I::If(BlockType::Empty));
    f.instruction(&I::Call(GET_STDOUT));
    f.instruction(&I::LocalSet(stream));
    f.instruction(&I::Else);
    f.instruction(&I::LocalGet(fd));
    f.instruction(&I::I32Const(2));
    f.instruction(&I::I32Ne);
    f.instruction(&I::If(BlockType::Empty));
    f.instruction(&I::I32Const(ERRNO_BADF));
    f.instruction(&I::Return);
    f.instruction(&I::End);
    f.instruction(&I::Call(GET_STDERR));
    f.instruction(&I::LocalSet(stream));
    f.instruction(&I::End);

    // The return area.
    f.instruction(&I::GlobalGet(0));
    f.instruction(&I::LocalTee(ret));
    f.instruction(&I::I32Eqz);
    f.instruction(&I::If(BlockType::Empty));
    f.instruction(&I::I32Const(0));
    f.instruction(&I::I32Const(0));
    f.instruction(&I::I32Const(4));
    f.instruction(&I::I32Const(12));
    f.instruction(&I::Call(REALLOC));
    f.instruction(&I::LocalTee(ret));
    f.instruction(&I::GlobalSet(0));
    f.instruction(&I::End);

    // for each iovec { while len > 0 { write min(len, MAX_WRITE) } }
    f.instruction(&I::Block(BlockType::Empty)); // $done
    f.instruction(&I::Loop(BlockType::Empty)); // $iovec
    f.instruction(&I::LocalGet(i));
    f.instruction(&I::LocalGet(iovs_len));
    f.instruction(&I::I32GeU);
    f.instruction(&I::BrIf(1));
    // buf = iovs[i].buf; len = iovs[i].buf_len
    f.instruction(&I::LocalGet(iovs));
    f.instruction(&I::LocalGet(i));
    f.instruction(&I::I32Const(8));
    f.instruction(&I::I32Mul);
    f.instruction(&I::I32Add);
    f.instruction(&I::I32Load(mem32(0)));
    f.instruction(&I::LocalSet(buf));
    f.instruction(&I::LocalGet(iovs));
    f.instruction(&I::LocalGet(i));
    f.instruction(&I::I32Const(8));
    f.instruction(&I::I32Mul);
    f.instruction(&I::I32Add);
    f.instruction(&I::I32Load(mem32(4)));
    f.instruction(&I::LocalSet(len));
    f.instruction(&I::Block(BlockType::Empty)); // $next
    f.instruction(&I::Loop(BlockType::Empty)); // $chunk
    f.instruction(&I::LocalGet(len));
    f.instruction(&I::I32Eqz);
    f.instruction(&I::BrIf(1));
    // chunk = min(len, MAX_WRITE)
    f.instruction(&I::LocalGet(len));
    f.instruction(&I::I32Const(MAX_WRITE));
    f.instruction(&I::LocalGet(len));
    f.instruction(&I::I32Const(MAX_WRITE));
    f.instruction(&I::I32LtU);
    f.instruction(&I::Select);
    f.instruction(&I::LocalSet(chunk));
    f.instruction(&I::LocalGet(stream));
    f.instruction(&I::LocalGet(buf));
    f.instruction(&I::LocalGet(chunk));
    f.instruction(&I::LocalGet(ret));
    f.instruction(&I::Call(WRITE));
    // An error: drop the error resource if there is one, and stop.
    f.instruction(&I::LocalGet(ret));
    f.instruction(&I::I32Load8U(mem8(0)));
    f.instruction(&I::If(BlockType::Empty));
    f.instruction(&I::LocalGet(ret));
    f.instruction(&I::I32Load8U(mem8(4)));
    f.instruction(&I::I32Eqz);
    f.instruction(&I::If(BlockType::Empty));
    f.instruction(&I::LocalGet(ret));
    f.instruction(&I::I32Load(mem32(8)));
    f.instruction(&I::Call(DROP_ERROR));
    f.instruction(&I::End);
    // Nothing written yet: EIO; else the partial count.
    f.instruction(&I::I32Const(ERRNO_IO));
    f.instruction(&I::I32Const(ERRNO_SUCCESS));
    f.instruction(&I::LocalGet(total));
    f.instruction(&I::I32Eqz);
    f.instruction(&I::Select);
    f.instruction(&I::LocalSet(errno));
    f.instruction(&I::Br(4)); // out of $done
    f.instruction(&I::End);
    // buf += chunk; len -= chunk; total += chunk
    f.instruction(&I::LocalGet(buf));
    f.instruction(&I::LocalGet(chunk));
    f.instruction(&I::I32Add);
    f.instruction(&I::LocalSet(buf));
    f.instruction(&I::LocalGet(len));
    f.instruction(&I::LocalGet(chunk));
    f.instruction(&I::I32Sub);
    f.instruction(&I::LocalSet(len));
    f.instruction(&I::LocalGet(total));
    f.instruction(&I::LocalGet(chunk));
    f.instruction(&I::I32Add);
    f.instruction(&I::LocalSet(total));
    f.instruction(&I::Br(0)); // $chunk
    f.instruction(&I::End); // $chunk
    f.instruction(&I::End); // $next
    f.instruction(&I::LocalGet(i));
    f.instruction(&I::I32Const(1));
    f.instruction(&I::I32Add);
    f.instruction(&I::LocalSet(i));
    f.instruction(&I::Br(0)); // $iovec
    f.instruction(&I::End); // $iovec
    f.instruction(&I::End); // $done

    f.instruction(&I::LocalGet(stream));
    f.instruction(&I::Call(DROP_STREAM));
    f.instruction(&I::LocalGet(nwritten));
    f.instruction(&I::LocalGet(total));
    f.instruction(&I::I32Store(mem32(0)));
    f.instruction(&I::LocalGet(errno));
    f.instruction(&I::End);
    f
}
