//! The optional LLVM backend of host code (feature `llvm`, inkwell over
//! LLVM 16): the same scalar programs as [`crate`] (cranelift), with the same
//! calling convention and the same bit-exact semantics (no fast-math; the
//! same compare/select chains; the interpreter's functions for everything
//! else). Each compiled function owns its execution engine; the LLVM
//! context is leaked so that it outlives them.

use crate as host;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::values::{BasicMetadataValueEnum, FloatValue, FunctionValue};
use inkwell::{AddressSpace, FloatPredicate, OptimizationLevel};
use keel_check::builtins::Level;
use keel_ir::ir::{Bin, Graph, NodeId, Op, Un};

/// A scalar program compiled by LLVM: `fn(inputs: *const f64, outputs: *mut f64)`.
pub struct LlvmScalarFn {
    pub inputs: Vec<NodeId>,
    pub outputs: Vec<NodeId>,
    /// The module as LLVM IR text (`--emit llvm-ir`).
    pub llvm_ir: String,
    ptr: extern "C" fn(*const f64, *mut f64),
    _engine: ExecutionEngine<'static>,
}

impl LlvmScalarFn {
    pub fn call(&self, inputs: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.outputs.len()];
        let padded: Vec<f64> = (0..self.inputs.len())
            .map(|i| inputs.get(i).copied().unwrap_or(f64::NAN))
            .collect();
        (self.ptr)(padded.as_ptr(), out.as_mut_ptr());
        out
    }
}

/// Compile a scalar program computing `outputs` (step- or batch-level).
pub fn scalar(g: &Graph, outputs: &[NodeId]) -> Result<LlvmScalarFn, String> {
    if outputs.iter().any(|id| g.nodes[*id].level > Level::Batch) {
        return Err("an output is not a scalar".into());
    }
    let (order, inputs) = host::plan(g, outputs);
    let ctx: &'static Context = Box::leak(Box::new(Context::create()));
    let module = ctx.create_module("keel_host");
    let f64t = ctx.f64_type();
    let i64t = ctx.i64_type();
    let ptr_t = ctx.ptr_type(AddressSpace::default());
    let fn_t = ctx
        .void_type()
        .fn_type(&[ptr_t.into(), ptr_t.into()], false);
    let function = module.add_function("keel_scalar", fn_t, None);
    let unary = module.add_function(
        "keel_unary",
        f64t.fn_type(&[i64t.into(), f64t.into()], false),
        None,
    );
    let pow = module.add_function(
        "keel_pow",
        f64t.fn_type(&[f64t.into(), f64t.into()], false),
        None,
    );
    let b = ctx.create_builder();
    b.position_at_end(ctx.append_basic_block(function, "entry"));
    let err = |e: inkwell::builder::BuilderError| e.to_string();
    let inp = function
        .get_nth_param(0)
        .ok_or("no param")?
        .into_pointer_value();
    let outp = function
        .get_nth_param(1)
        .ok_or("no param")?
        .into_pointer_value();
    let mut vals: Vec<Option<FloatValue>> = vec![None; g.nodes.len()];
    for (k, id) in inputs.iter().enumerate() {
        // SAFETY (of the generated code): k < inputs.len(), the caller's array length.
        let p =
            unsafe { b.build_in_bounds_gep(f64t, inp, &[i64t.const_int(k as u64, false)], "p") }
                .map_err(err)?;
        vals[*id] = Some(b.build_load(f64t, p, "in").map_err(err)?.into_float_value());
    }
    let nan = f64t.const_float(f64::NAN);
    let one = f64t.const_float(1.0);
    let zero = f64t.const_float(0.0);
    let call1 = |f: FunctionValue<'static>,
                 args: &[BasicMetadataValueEnum<'static>]|
     -> Result<FloatValue<'static>, String> {
        let c = b.build_call(f, args, "c").map_err(err)?;
        c.try_as_basic_value()
            .basic()
            .map(|v| v.into_float_value())
            .ok_or_else(|| "call returned nothing".to_string())
    };
    for id in order {
        let n = &g.nodes[id];
        let arg = |k: usize| -> Result<FloatValue<'static>, String> {
            n.args
                .get(k)
                .and_then(|a| vals[*a])
                .ok_or_else(|| format!("argument {k} of %{id} is missing"))
        };
        let to_f = |c: inkwell::values::IntValue<'static>| {
            b.build_select(c, one, zero, "b")
                .map(|v| v.into_float_value())
                .map_err(err)
        };
        let v: FloatValue<'static> = match &n.op {
            Op::Const(c) => f64t.const_float(*c),
            Op::Param { value, .. } => f64t.const_float(*value),
            Op::StopGrad | Op::Broadcast => arg(0)?,
            Op::Unary(Un::Neg) => b.build_float_neg(arg(0)?, "neg").map_err(err)?,
            Op::Unary(Un::Not) => {
                let c = b
                    .build_float_compare(FloatPredicate::OEQ, arg(0)?, zero, "z")
                    .map_err(err)?;
                to_f(c)?
            }
            Op::Unary(u) => {
                let code = host::UNARY
                    .iter()
                    .position(|v| v == u)
                    .unwrap_or(usize::MAX) as u64;
                call1(unary, &[i64t.const_int(code, false).into(), arg(0)?.into()])?
            }
            Op::Binary(op) => {
                let (x, y) = (arg(0)?, arg(1)?);
                match op {
                    Bin::Add => b.build_float_add(x, y, "a").map_err(err)?,
                    Bin::Sub => b.build_float_sub(x, y, "s").map_err(err)?,
                    Bin::Mul => b.build_float_mul(x, y, "m").map_err(err)?,
                    Bin::Div => b.build_float_div(x, y, "d").map_err(err)?,
                    Bin::Pow => call1(pow, &[x.into(), y.into()])?,
                    Bin::Min | Bin::Max => {
                        let pred = if *op == Bin::Min {
                            FloatPredicate::OLT
                        } else {
                            FloatPredicate::OGT
                        };
                        let pick = b.build_float_compare(pred, y, x, "pick").map_err(err)?;
                        let v = b
                            .build_select(pick, y, x, "v")
                            .map_err(err)?
                            .into_float_value();
                        let uno = b
                            .build_float_compare(FloatPredicate::UNO, x, y, "uno")
                            .map_err(err)?;
                        b.build_select(uno, nan, v, "mm")
                            .map_err(err)?
                            .into_float_value()
                    }
                    Bin::And | Bin::Or => {
                        let cx = b
                            .build_float_compare(FloatPredicate::UNE, x, zero, "cx")
                            .map_err(err)?;
                        let cy = b
                            .build_float_compare(FloatPredicate::UNE, y, zero, "cy")
                            .map_err(err)?;
                        let c = if *op == Bin::And {
                            b.build_and(cx, cy, "and")
                        } else {
                            b.build_or(cx, cy, "or")
                        }
                        .map_err(err)?;
                        to_f(c)?
                    }
                    cmp => {
                        let pred = match cmp {
                            Bin::Lt => FloatPredicate::OLT,
                            Bin::Le => FloatPredicate::OLE,
                            Bin::Gt => FloatPredicate::OGT,
                            Bin::Ge => FloatPredicate::OGE,
                            Bin::Eq => FloatPredicate::OEQ,
                            _ => FloatPredicate::UNE,
                        };
                        let c = b.build_float_compare(pred, x, y, "cmp").map_err(err)?;
                        to_f(c)?
                    }
                }
            }
            Op::Where => {
                let c = b
                    .build_float_compare(FloatPredicate::UNE, arg(0)?, zero, "c")
                    .map_err(err)?;
                b.build_select(c, arg(1)?, arg(2)?, "w")
                    .map_err(err)?
                    .into_float_value()
            }
            Op::Clamp => {
                let (x, lo, hi) = (arg(0)?, arg(1)?, arg(2)?);
                let below = b
                    .build_float_compare(FloatPredicate::OLT, x, lo, "below")
                    .map_err(err)?;
                let y = b
                    .build_select(below, lo, x, "y")
                    .map_err(err)?
                    .into_float_value();
                let above = b
                    .build_float_compare(FloatPredicate::OGT, y, hi, "above")
                    .map_err(err)?;
                let z = b
                    .build_select(above, hi, y, "z")
                    .map_err(err)?
                    .into_float_value();
                let isnan = b
                    .build_float_compare(FloatPredicate::UNO, x, x, "isnan")
                    .map_err(err)?;
                b.build_select(isnan, x, z, "clamp")
                    .map_err(err)?
                    .into_float_value()
            }
            other => return Err(format!("{other:?} is not host code")),
        };
        vals[id] = Some(v);
    }
    for (k, id) in outputs.iter().enumerate() {
        let v = vals[*id].ok_or("output not computed")?;
        // SAFETY (of the generated code): k < outputs.len(), the caller's array length.
        let p =
            unsafe { b.build_in_bounds_gep(f64t, outp, &[i64t.const_int(k as u64, false)], "q") }
                .map_err(err)?;
        b.build_store(p, v).map_err(err)?;
    }
    b.build_return(None).map_err(err)?;
    module.verify().map_err(|e| e.to_string())?;
    let llvm_ir = module.print_to_string().to_string();
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .map_err(|e| e.to_string())?;
    engine.add_global_mapping(&unary, host::keel_unary as *const () as usize);
    engine.add_global_mapping(&pow, host::keel_pow as *const () as usize);
    let addr = engine
        .get_function_address("keel_scalar")
        .map_err(|e| e.to_string())?;
    // SAFETY: the function was generated with exactly this signature.
    let ptr = unsafe { std::mem::transmute::<usize, extern "C" fn(*const f64, *mut f64)>(addr) };
    Ok(LlvmScalarFn {
        inputs,
        outputs: outputs.to_vec(),
        llvm_ir,
        ptr,
        _engine: engine,
    })
}
