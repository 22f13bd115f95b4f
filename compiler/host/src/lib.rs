//! Host code: the step-level and per-sample parts of the IR, compiled to
//! native code with cranelift.
//!
//! One long-lived [`Jit`] owns the module; a translator emits one instruction
//! sequence per IR node. Two shapes of function:
//!
//! - a **scalar program** `extern "C" fn(inputs: *const f64, outputs: *mut f64)`
//!   for step-level values (schedules, curriculum, state updates, guard
//!   conditions): `inputs[k]` is the value of the k-th entry of
//!   [`ScalarFn::inputs`] (the values the host receives: `step`, state,
//!   batch reductions the device computed), `outputs[k]` of
//!   [`ScalarFn::outputs`];
//! - a **column program** `extern "C" fn(n: i64, cols: *const *const f64,
//!   scalars: *const f64, out: *mut f64)` that loops over n samples inside the
//!   generated code (rewards over sample fields): `cols[k]` points at the
//!   column of [`ColumnFn::columns`]`[k]`, `scalars[k]` is
//!   [`ColumnFn::scalars`]`[k]`.
//!
//! Semantics are the interpreter's, bit for bit on f64: arithmetic, sqrt,
//! floor and ceil are IEEE instructions; comparisons are ordered (false on
//! NaN) except `!=` (true on NaN); `min`/`max`/`clamp`/`where` are compare
//! and select chains mirroring `ops::binary`/`ops::clamp`; every other
//! function calls the one definition, `ops::unary`, through a registered
//! symbol. Division by zero gives ±inf or NaN as IEEE says.
//!
//! A compiled function stays valid after its [`Jit`] is dropped:
//! cranelift-jit never frees finalized code unless asked to (unsafely),
//! which Keel never does.

#[cfg(feature = "llvm")]
pub mod llvm;

use cranelift_codegen::Context;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData, Value, types};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};
use keel_check::builtins::Level;
use keel_ir::ir::{Bin, Graph, NodeId, Op, Un};
use keel_ir::ops;

/// The unary operations host code reaches through `keel_unary`, by code.
pub const UNARY: &[Un] = &[
    Un::Neg,
    Un::Exp,
    Un::Log,
    Un::Log1p,
    Un::Expm1,
    Un::Sqrt,
    Un::Abs,
    Un::Sign,
    Un::Sigmoid,
    Un::Softplus,
    Un::Tanh,
    Un::Relu,
    Un::Cos,
    Un::Sin,
    Un::Floor,
    Un::Ceil,
    Un::Round,
    Un::Not,
];

pub(crate) extern "C" fn keel_unary(op: i64, x: f64) -> f64 {
    match UNARY.get(op as usize) {
        Some(u) => ops::unary(*u, x),
        None => f64::NAN,
    }
}

pub(crate) extern "C" fn keel_pow(x: f64, y: f64) -> f64 {
    ops::binary(Bin::Pow, x, y)
}

/// A compiled scalar program.
pub struct ScalarFn {
    pub inputs: Vec<NodeId>,
    pub outputs: Vec<NodeId>,
    pub clif: String,
    ptr: extern "C" fn(*const f64, *mut f64),
}

impl ScalarFn {
    /// Run on input values (in the order of `inputs`).
    pub fn call(&self, inputs: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.outputs.len()];
        let padded: Vec<f64> = (0..self.inputs.len())
            .map(|i| inputs.get(i).copied().unwrap_or(f64::NAN))
            .collect();
        (self.ptr)(padded.as_ptr(), out.as_mut_ptr());
        out
    }
}

/// A compiled column program.
pub struct ColumnFn {
    pub columns: Vec<NodeId>,
    pub scalars: Vec<NodeId>,
    pub output: NodeId,
    pub clif: String,
    ptr: extern "C" fn(i64, *const *const f64, *const f64, *mut f64),
}

impl ColumnFn {
    /// Run over columns of equal length n; returns n values.
    pub fn call(&self, columns: &[&[f64]], scalars: &[f64]) -> Result<Vec<f64>, String> {
        let n = columns.first().map(|c| c.len()).unwrap_or(0);
        if columns.len() != self.columns.len() || columns.iter().any(|c| c.len() != n) {
            return Err(format!(
                "expected {} columns of equal length",
                self.columns.len()
            ));
        }
        let scal: Vec<f64> = (0..self.scalars.len())
            .map(|i| scalars.get(i).copied().unwrap_or(f64::NAN))
            .collect();
        let ptrs: Vec<*const f64> = columns.iter().map(|c| c.as_ptr()).collect();
        let mut out = vec![0.0; n];
        (self.ptr)(n as i64, ptrs.as_ptr(), scal.as_ptr(), out.as_mut_ptr());
        Ok(out)
    }
}

/// The long-lived JIT.
pub struct Jit {
    module: JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    count: usize,
    unary: FuncId,
    pow: FuncId,
}

/// Whether host code computes this node itself (else it is an input).
pub(crate) fn computable(op: &Op) -> bool {
    matches!(
        op,
        Op::Const(_)
            | Op::Param { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Clamp
            | Op::StopGrad
            | Op::Broadcast
    )
}

impl Jit {
    pub fn new() -> Result<Jit, String> {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").map_err(|e| e.to_string())?;
        let isa_builder = cranelift_native::builder().map_err(|e| e.to_string())?;
        let isa = isa_builder
            .finish(settings::Flags::new(flags))
            .map_err(|e| e.to_string())?;
        let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
        jb.symbol("keel_unary", keel_unary as *const u8);
        jb.symbol("keel_pow", keel_pow as *const u8);
        let mut module = JITModule::new(jb);
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(types::I64));
        sig.params.push(AbiParam::new(types::F64));
        sig.returns.push(AbiParam::new(types::F64));
        let unary = module
            .declare_function("keel_unary", Linkage::Import, &sig)
            .map_err(|e| e.to_string())?;
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(types::F64));
        sig.params.push(AbiParam::new(types::F64));
        sig.returns.push(AbiParam::new(types::F64));
        let pow = module
            .declare_function("keel_pow", Linkage::Import, &sig)
            .map_err(|e| e.to_string())?;
        Ok(Jit {
            ctx: module.make_context(),
            module,
            fctx: FunctionBuilderContext::new(),
            count: 0,
            unary,
            pow,
        })
    }

    /// Compile a scalar program computing `outputs` (all step- or batch-level).
    pub fn scalar(&mut self, g: &Graph, outputs: &[NodeId]) -> Result<ScalarFn, String> {
        if let Some(id) = outputs.iter().find(|id| g.nodes[**id].level > Level::Batch) {
            return Err(format!("node %{id} is not a scalar"));
        }
        let (order, inputs) = plan(g, outputs);
        let tc = self.module.target_config();
        let ptr_ty = tc.pointer_type();
        self.module.clear_context(&mut self.ctx);
        self.ctx.func.signature.params.push(AbiParam::new(ptr_ty));
        self.ctx.func.signature.params.push(AbiParam::new(ptr_ty));
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let mem = MemFlagsData::trusted();
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        b.seal_block(block);
        let (inp, outp) = (b.block_params(block)[0], b.block_params(block)[1]);
        let mut vals: Vec<Option<Value>> = vec![None; g.nodes.len()];
        for (k, id) in inputs.iter().enumerate() {
            vals[*id] = Some(b.ins().load(types::F64, mem, inp, (k * 8) as i32));
        }
        let unary = self.module.declare_func_in_func(self.unary, b.func);
        let pow = self.module.declare_func_in_func(self.pow, b.func);
        for id in order {
            let v = translate(&mut b, g, id, &vals, unary, pow)?;
            vals[id] = Some(v);
        }
        for (k, id) in outputs.iter().enumerate() {
            let v = vals[*id].ok_or("output not computed")?;
            b.ins().store(mem, v, outp, (k * 8) as i32);
        }
        b.ins().return_(&[]);
        b.finalize(tc);
        let clif = self.ctx.func.display().to_string();
        let ptr = self.finish("scalar")?;
        // SAFETY: the function was generated with exactly this signature.
        let ptr =
            unsafe { std::mem::transmute::<*const u8, extern "C" fn(*const f64, *mut f64)>(ptr) };
        Ok(ScalarFn {
            inputs,
            outputs: outputs.to_vec(),
            clif,
            ptr,
        })
    }

    /// Compile a column program computing `output` (an elementwise value at
    /// sequence level) over every sample in one call.
    pub fn column(&mut self, g: &Graph, output: NodeId) -> Result<ColumnFn, String> {
        let level = g.nodes[output].level;
        let (order, inputs) = plan(g, &[output]);
        let columns: Vec<NodeId> = inputs
            .iter()
            .copied()
            .filter(|i| g.nodes[*i].level == level && level > Level::Batch)
            .collect();
        let scalars: Vec<NodeId> = inputs
            .iter()
            .copied()
            .filter(|i| !columns.contains(i))
            .collect();
        if let Some(s) = scalars.iter().find(|s| g.nodes[**s].level > Level::Batch) {
            return Err(format!("node %{s} is neither a column nor a scalar"));
        }
        let tc = self.module.target_config();
        let ptr_ty = tc.pointer_type();
        self.module.clear_context(&mut self.ctx);
        let sig = &mut self.ctx.func.signature;
        sig.params.push(AbiParam::new(types::I64));
        sig.params.push(AbiParam::new(ptr_ty));
        sig.params.push(AbiParam::new(ptr_ty));
        sig.params.push(AbiParam::new(ptr_ty));
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let mem = MemFlagsData::trusted();
        let entry = b.create_block();
        let head = b.create_block();
        let body = b.create_block();
        let exit = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.append_block_param(head, types::I64);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let (n, cols, scal, out) = (p[0], p[1], p[2], p[3]);
        let mut vals: Vec<Option<Value>> = vec![None; g.nodes.len()];
        for (k, id) in scalars.iter().enumerate() {
            vals[*id] = Some(b.ins().load(types::F64, mem, scal, (k * 8) as i32));
        }
        let col_ptrs: Vec<Value> = (0..columns.len())
            .map(|k| b.ins().load(ptr_ty, mem, cols, (k * 8) as i32))
            .collect();
        let zero = b.ins().iconst(types::I64, 0);
        b.ins().jump(head, &[zero.into()]);
        b.switch_to_block(head);
        let i = b.block_params(head)[0];
        let more = b.ins().icmp(
            cranelift_codegen::ir::condcodes::IntCC::SignedLessThan,
            i,
            n,
        );
        b.ins().brif(more, body, &[], exit, &[]);
        b.switch_to_block(body);
        let offset = b.ins().ishl_imm_u(i, 3);
        for (k, id) in columns.iter().enumerate() {
            let addr = b.ins().iadd(col_ptrs[k], offset);
            vals[*id] = Some(b.ins().load(types::F64, mem, addr, 0));
        }
        let unary = self.module.declare_func_in_func(self.unary, b.func);
        let pow = self.module.declare_func_in_func(self.pow, b.func);
        for id in order {
            let v = translate(&mut b, g, id, &vals, unary, pow)?;
            vals[id] = Some(v);
        }
        let v = vals[output].ok_or("output not computed")?;
        let addr = b.ins().iadd(out, offset);
        b.ins().store(mem, v, addr, 0);
        let next = b.ins().iadd_imm_s(i, 1);
        b.ins().jump(head, &[next.into()]);
        b.switch_to_block(exit);
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(tc);
        let clif = self.ctx.func.display().to_string();
        let ptr = self.finish("column")?;
        // SAFETY: the function was generated with exactly this signature.
        let ptr = unsafe {
            std::mem::transmute::<
                *const u8,
                extern "C" fn(i64, *const *const f64, *const f64, *mut f64),
            >(ptr)
        };
        Ok(ColumnFn {
            columns,
            scalars,
            output,
            clif,
            ptr,
        })
    }

    fn finish(&mut self, kind: &str) -> Result<*const u8, String> {
        self.count += 1;
        let name = format!("keel_{kind}_{}", self.count);
        let id = self
            .module
            .declare_function(&name, Linkage::Local, &self.ctx.func.signature)
            .map_err(|e| e.to_string())?;
        self.module
            .define_function(id, &mut self.ctx)
            .map_err(|e| format!("{e:?}"))?;
        self.module.clear_context(&mut self.ctx);
        self.module
            .finalize_definitions()
            .map_err(|e| e.to_string())?;
        Ok(self.module.get_finalized_function(id))
    }
}

/// The nodes `outputs` need, split into computed nodes (in order) and
/// inputs (nodes host code receives). Shared by both backends.
pub(crate) fn plan(g: &Graph, outputs: &[NodeId]) -> (Vec<NodeId>, Vec<NodeId>) {
    let mut need = vec![false; g.nodes.len()];
    let mut stack: Vec<NodeId> = outputs.to_vec();
    let mut inputs = Vec::new();
    while let Some(id) = stack.pop() {
        if need[id] {
            continue;
        }
        need[id] = true;
        if computable(&g.nodes[id].op) {
            stack.extend(g.nodes[id].args.iter().copied());
        } else {
            inputs.push(id);
        }
    }
    inputs.sort();
    inputs.dedup();
    let order = (0..g.nodes.len())
        .filter(|i| need[*i] && computable(&g.nodes[*i].op))
        .collect();
    (order, inputs)
}

fn bool_to_f64(b: &mut FunctionBuilder, c: Value) -> Value {
    let one = b.ins().f64const(1.0);
    let zero = b.ins().f64const(0.0);
    b.ins().select(c, one, zero)
}

/// One instruction sequence per IR node.
fn translate(
    b: &mut FunctionBuilder,
    g: &Graph,
    id: NodeId,
    vals: &[Option<Value>],
    unary: cranelift_codegen::ir::FuncRef,
    pow: cranelift_codegen::ir::FuncRef,
) -> Result<Value, String> {
    let n = &g.nodes[id];
    let arg = |k: usize| -> Result<Value, String> {
        n.args
            .get(k)
            .and_then(|a| vals[*a])
            .ok_or_else(|| format!("argument {k} of %{id} is missing"))
    };
    let nan = |b: &mut FunctionBuilder| b.ins().f64const(f64::NAN);
    Ok(match &n.op {
        Op::Const(c) => b.ins().f64const(*c),
        Op::Param { value, .. } => b.ins().f64const(*value),
        Op::StopGrad | Op::Broadcast => arg(0)?,
        Op::Unary(u) => {
            let x = arg(0)?;
            match u {
                Un::Neg => b.ins().fneg(x),
                Un::Abs => b.ins().fabs(x),
                Un::Sqrt => b.ins().sqrt(x),
                Un::Floor => b.ins().floor(x),
                Un::Ceil => b.ins().ceil(x),
                Un::Not => {
                    let zero = b.ins().f64const(0.0);
                    let c = b.ins().fcmp(FloatCC::Equal, x, zero);
                    bool_to_f64(b, c)
                }
                other => {
                    let code = UNARY.iter().position(|v| v == other).unwrap_or(usize::MAX) as i64;
                    let op = b.ins().iconst(types::I64, code);
                    let call = b.ins().call(unary, &[op, x]);
                    b.inst_results(call)[0]
                }
            }
        }
        Op::Binary(op) => {
            let (x, y) = (arg(0)?, arg(1)?);
            match op {
                Bin::Add => b.ins().fadd(x, y),
                Bin::Sub => b.ins().fsub(x, y),
                Bin::Mul => b.ins().fmul(x, y),
                Bin::Div => b.ins().fdiv(x, y),
                Bin::Pow => {
                    let call = b.ins().call(pow, &[x, y]);
                    b.inst_results(call)[0]
                }
                Bin::Min | Bin::Max => {
                    let cc = if *op == Bin::Min {
                        FloatCC::LessThan
                    } else {
                        FloatCC::GreaterThan
                    };
                    let pick_y = b.ins().fcmp(cc, y, x);
                    let v = b.ins().select(pick_y, y, x);
                    let uno = b.ins().fcmp(FloatCC::Unordered, x, y);
                    let nn = nan(b);
                    b.ins().select(uno, nn, v)
                }
                Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge | Bin::Eq | Bin::Ne => {
                    let cc = match op {
                        Bin::Lt => FloatCC::LessThan,
                        Bin::Le => FloatCC::LessThanOrEqual,
                        Bin::Gt => FloatCC::GreaterThan,
                        Bin::Ge => FloatCC::GreaterThanOrEqual,
                        Bin::Eq => FloatCC::Equal,
                        _ => FloatCC::NotEqual,
                    };
                    let c = b.ins().fcmp(cc, x, y);
                    bool_to_f64(b, c)
                }
                Bin::And | Bin::Or => {
                    let zero = b.ins().f64const(0.0);
                    let cx = b.ins().fcmp(FloatCC::NotEqual, x, zero);
                    let cy = b.ins().fcmp(FloatCC::NotEqual, y, zero);
                    let c = if *op == Bin::And {
                        b.ins().band(cx, cy)
                    } else {
                        b.ins().bor(cx, cy)
                    };
                    bool_to_f64(b, c)
                }
            }
        }
        Op::Where => {
            let (c, t, e) = (arg(0)?, arg(1)?, arg(2)?);
            let zero = b.ins().f64const(0.0);
            let cc = b.ins().fcmp(FloatCC::NotEqual, c, zero);
            b.ins().select(cc, t, e)
        }
        Op::Clamp => {
            let (x, lo, hi) = (arg(0)?, arg(1)?, arg(2)?);
            let below = b.ins().fcmp(FloatCC::LessThan, x, lo);
            let y = b.ins().select(below, lo, x);
            let above = b.ins().fcmp(FloatCC::GreaterThan, y, hi);
            let z = b.ins().select(above, hi, y);
            let isnan = b.ins().fcmp(FloatCC::Unordered, x, x);
            b.ins().select(isnan, x, z)
        }
        other => return Err(format!("{other:?} is not host code")),
    })
}
