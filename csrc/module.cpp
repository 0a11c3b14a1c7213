// The Python binding: module intbert._native. Tensors travel as data pointers (Python ints); the
// Python side (intbert/engine/backends/native.py) checks every dtype, shape and contiguity before a
// call, since nothing here can. Constants travel as small tuples parsed in the format strings below:
//   requant  (m_ptr, e_ptr, bits, input_bits)
//   residual ((requant a), (requant b), bits)
//   layernorm (shift, sign_ptr, bias_ptr)        gelu (b_ptr, c_ptr, one_ptr)
//   softmax  (pre_shift, x0, zm, b, c, m, e, output_bit)
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <mutex>
#include <new>

#include "engine.h"
#include "threadpool.h"

using namespace intbert;

namespace {

#define RQ_FMT "(LLii)"
#define RQ_ARGS(r) &r.m, &r.e, &r.bits, &r.input_bits
#define ADD_FMT "(" RQ_FMT RQ_FMT "i)"
#define ADD_ARGS(x) RQ_ARGS(x.a), RQ_ARGS(x.b), &x.bits
#define LN_FMT "(LLL)"
#define LN_ARGS(l) &l.shift, &l.sign, &l.bias

// Pointers arrive as integers; these mirror kernels.h's structs with integer fields.
struct Rq {
  long long m, e;
  int bits, input_bits;
  RequantC c() const { return {reinterpret_cast<const int64_t*>(m), reinterpret_cast<const int64_t*>(e), bits, input_bits}; }
};
struct Add {
  Rq a, b;
  int bits;
  ResidualC c() const { return {a.c(), b.c(), bits}; }
};
struct Ln {
  long long shift, sign, bias;
  LayerNormC c() const { return {shift, reinterpret_cast<const int64_t*>(sign), reinterpret_cast<const int64_t*>(bias)}; }
};

template <class T>
T* ptr(long long p) {
  return reinterpret_cast<T*>(p);
}

// One native call at a time: the pool is not reentrant, and Python threads may call concurrently
// (the GIL is released while the kernels run).
std::mutex g_call;

template <class F>
PyObject* run(F f) {
  bool oom = false;
  Py_BEGIN_ALLOW_THREADS;
  try {
    std::lock_guard<std::mutex> lock(g_call);
    f();
  } catch (const std::bad_alloc&) {
    oom = true;
  }
  Py_END_ALLOW_THREADS;
  if (oom) return PyErr_NoMemory();
  Py_RETURN_NONE;
}

const char* CAPSULE = "intbert.PackedWeight";

PackedWeight* weight_of(PyObject* capsule) {
  return static_cast<PackedWeight*>(PyCapsule_GetPointer(capsule, CAPSULE));
}

void free_capsule(PyObject* capsule) { free_weight(weight_of(capsule)); }

PyObject* py_detected_isa(PyObject*, PyObject*) { return PyLong_FromLong(detected_isa()); }
PyObject* py_isa(PyObject*, PyObject*) { return PyLong_FromLong(current_isa()); }

PyObject* py_set_isa(PyObject*, PyObject* args) {
  int isa;
  if (!PyArg_ParseTuple(args, "i", &isa)) return nullptr;
  if (!set_isa(Isa(isa))) {
    PyErr_Format(PyExc_ValueError, "ISA level %d is not available on this CPU (highest: %d)", isa, int(detected_isa()));
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* py_threads(PyObject*, PyObject*) { return PyLong_FromLong(ThreadPool::instance().threads()); }

PyObject* py_set_threads(PyObject*, PyObject* args) {
  int n;
  if (!PyArg_ParseTuple(args, "i", &n)) return nullptr;
  return run([&] { ThreadPool::instance().set_threads(n); });
}

PyObject* py_pack_weight(PyObject*, PyObject* args) {
  long long w, n, k, sn, sk;
  int isa, chunked;
  if (!PyArg_ParseTuple(args, "LLLLLip", &w, &n, &k, &sn, &sk, &isa, &chunked)) return nullptr;
  if (isa < 0 || isa > detected_isa()) {
    PyErr_Format(PyExc_ValueError, "ISA level %d is not available on this CPU", isa);
    return nullptr;
  }
  PackedWeight* packed = nullptr;
  try {
    packed = pack_weight(ptr<const int8_t>(w), n, k, sn, sk, Isa(isa), chunked);
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  return PyCapsule_New(packed, CAPSULE, free_capsule);
}

PyObject* py_packed_isa(PyObject*, PyObject* args) {
  PyObject* cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return nullptr;
  PackedWeight* w = weight_of(cap);
  return w ? PyLong_FromLong(w->isa) : nullptr;
}

PyObject* py_linear_i32(PyObject*, PyObject* args) {
  PyObject* cap;
  long long x, m, lda, out, ld_out;
  if (!PyArg_ParseTuple(args, "OLLLLL", &cap, &x, &m, &lda, &out, &ld_out)) return nullptr;
  PackedWeight* w = weight_of(cap);
  if (!w) return nullptr;
  return run([&] { linear_i32(*w, ptr<const int8_t>(x), m, lda, ptr<int32_t>(out), ld_out); });
}

PyObject* py_linear_requant(PyObject*, PyObject* args) {
  PyObject* cap;
  long long x, m, lda, bias, out, ld_out;
  Rq rq;
  if (!PyArg_ParseTuple(args, "OLLLL" RQ_FMT "LL", &cap, &x, &m, &lda, &bias, RQ_ARGS(rq), &out, &ld_out))
    return nullptr;
  PackedWeight* w = weight_of(cap);
  if (!w) return nullptr;
  return run([&] {
    linear_requant(*w, ptr<const int8_t>(x), m, lda, ptr<const int32_t>(bias), rq.c(), ptr<int8_t>(out), ld_out);
  });
}

PyObject* py_linear_gelu_requant2(PyObject*, PyObject* args) {
  PyObject* cap;
  long long x, m, lda, bias, gb, gc, gone, out, ld_out;
  Rq rq1, rq2;
  if (!PyArg_ParseTuple(args, "OLLLL(LLL)" RQ_FMT RQ_FMT "LL", &cap, &x, &m, &lda, &bias, &gb, &gc, &gone,
                        RQ_ARGS(rq1), RQ_ARGS(rq2), &out, &ld_out))
    return nullptr;
  PackedWeight* w = weight_of(cap);
  if (!w) return nullptr;
  const GeluC g{ptr<const int64_t>(gb), ptr<const int64_t>(gc), ptr<const int64_t>(gone)};
  return run([&] {
    linear_gelu_requant2(*w, ptr<const int8_t>(x), m, lda, ptr<const int32_t>(bias), g, rq1.c(), rq2.c(),
                         ptr<int8_t>(out), ld_out);
  });
}

PyObject* py_linear_residual_ln_requant(PyObject*, PyObject* args) {
  PyObject* cap;
  long long x, m, lda, bias, res, ld_res, out, ld_out;
  Add add;
  Ln ln;
  Rq rq;
  if (!PyArg_ParseTuple(args, "OLLLLLL" ADD_FMT LN_FMT RQ_FMT "LL", &cap, &x, &m, &lda, &bias, &res, &ld_res,
                        ADD_ARGS(add), LN_ARGS(ln), RQ_ARGS(rq), &out, &ld_out))
    return nullptr;
  PackedWeight* w = weight_of(cap);
  if (!w) return nullptr;
  return run([&] {
    linear_residual_ln_requant(*w, ptr<const int8_t>(x), m, lda, ptr<const int32_t>(bias), ptr<const int8_t>(res),
                               ld_res, add.c(), ln.c(), rq.c(), ptr<int8_t>(out), ld_out);
  });
}

PyObject* py_attention(PyObject*, PyObject* args) {
  long long q, k, v, ld, starts, nseq, heads, d, out, ld_out;
  long long pre_shift, x0, zm, b, c, m, e;
  int output_bit;
  Rq rq;
  if (!PyArg_ParseTuple(args, "LLLLLLLL(LLLLLLLi)" RQ_FMT "LL", &q, &k, &v, &ld, &starts, &nseq, &heads, &d,
                        &pre_shift, &x0, &zm, &b, &c, &m, &e, &output_bit, RQ_ARGS(rq), &out, &ld_out))
    return nullptr;
  const SoftmaxC sm{pre_shift, x0, zm, b, c, m, e, output_bit};
  return run([&] {
    attention(ptr<const int8_t>(q), ptr<const int8_t>(k), ptr<const int8_t>(v), ld, ptr<const int64_t>(starts), nseq,
              heads, d, sm, rq.c(), ptr<int8_t>(out), ld_out);
  });
}

PyObject* py_embed(PyObject*, PyObject* args) {
  long long word, tt, pos, ids, tids, pids, rows, n, out, ld_out;
  Add add1, add2;
  Ln ln;
  Rq rq;
  if (!PyArg_ParseTuple(args, "LLLLLLLL" ADD_FMT ADD_FMT LN_FMT RQ_FMT "LL", &word, &tt, &pos, &ids, &tids, &pids,
                        &rows, &n, ADD_ARGS(add1), ADD_ARGS(add2), LN_ARGS(ln), RQ_ARGS(rq), &out, &ld_out))
    return nullptr;
  return run([&] {
    embed(ptr<const int8_t>(word), ptr<const int8_t>(tt), ptr<const int8_t>(pos), ptr<const int64_t>(ids),
          ptr<const int64_t>(tids), ptr<const int64_t>(pids), rows, n, add1.c(), add2.c(), ln.c(), rq.c(),
          ptr<int8_t>(out), ld_out);
  });
}

PyObject* py_requant_i32(PyObject*, PyObject* args) {
  long long q, ld_q, rows, n, out, ld_out;
  Rq rq;
  if (!PyArg_ParseTuple(args, "LLLL" RQ_FMT "LL", &q, &ld_q, &rows, &n, RQ_ARGS(rq), &out, &ld_out)) return nullptr;
  return run([&] { requant_i32(ptr<const int32_t>(q), ld_q, rows, n, rq.c(), ptr<int8_t>(out), ld_out); });
}

PyMethodDef methods[] = {
    {"detected_isa", py_detected_isa, METH_NOARGS, "Highest ISA level this CPU and OS run (0 scalar .. 3 amx)."},
    {"isa", py_isa, METH_NOARGS, "ISA level the kernels use now."},
    {"set_isa", py_set_isa, METH_VARARGS, "Use a lower (or the detected) ISA level."},
    {"threads", py_threads, METH_NOARGS, "Threads of the native pool."},
    {"set_threads", py_set_threads, METH_VARARGS, "Resize the native pool."},
    {"pack_weight", py_pack_weight, METH_VARARGS, "Pack int8 W [n, k] (strided) for one ISA level, in L2-sized column chunks if asked."},
    {"packed_isa", py_packed_isa, METH_VARARGS, "ISA level a packed weight was packed for."},
    {"linear_i32", py_linear_i32, METH_VARARGS, "x @ W^T -> int32."},
    {"linear_requant", py_linear_requant, METH_VARARGS, "x @ W^T + b -> requant -> int8."},
    {"linear_gelu_requant2", py_linear_gelu_requant2, METH_VARARGS, "FFN up: + b -> i-GELU -> requant x2 -> int8."},
    {"linear_residual_ln_requant", py_linear_residual_ln_requant, METH_VARARGS,
     "dense + b + residual -> LayerNorm -> requant -> int8."},
    {"attention", py_attention, METH_VARARGS, "Packed-token fused attention -> requantized int8 context."},
    {"embed", py_embed, METH_VARARGS, "Embedding lookups + residuals + LayerNorm + requant -> int8."},
    {"requant_i32", py_requant_i32, METH_VARARGS, "int32 -> requant -> int8."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "intbert's native integer kernels (see csrc/).", -1,
                      methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
