/* Minimum-cost chains of edits with arbitrary positive costs, as a CPython extension.
 *
 * infer(a: tuple, b: tuple, ins, del, rep) -> list[Edit]
 *
 * The same DP, tie-breaking and merging as the numba fallback in _dp.py, but tokens are
 * hashed and compared in C and the Edit tuples are built in C: on short texts the Python
 * object work, not the DP, is what costs time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyTypeObject *edit_type = NULL;
static PyObject *op_names[4]; /* 1 replace, 2 delete, 3 insert */
static PyObject *empty_tuple;

static PyObject *set_edit_type(PyObject *self, PyObject *type) {
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "Edit must be a tuple subclass");
        return NULL;
    }
    Py_XDECREF(edit_type);
    Py_INCREF(type);
    edit_type = (PyTypeObject *)type;
    Py_RETURN_NONE;
}

/* 1 if equal, 0 if not, -1 on error. Hashes first: most pairs differ there. */
static inline int tok_eq(PyObject *x, PyObject *y, Py_hash_t hx, Py_hash_t hy) {
    if (hx != hy) return 0;
    if (x == y) return 1;
    return PyObject_RichCompareBool(x, y, Py_EQ);
}

static int append_edit(PyObject *out, int op, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1,
                       PyObject *a, PyObject *b) {
    PyObject *start = PyLong_FromSsize_t(i0);
    PyObject *old = (i1 > i0) ? PyTuple_GetSlice(a, i0, i1) : (Py_INCREF(empty_tuple), empty_tuple);
    PyObject *new = (j1 > j0) ? PyTuple_GetSlice(b, j0, j1) : (Py_INCREF(empty_tuple), empty_tuple);
    if (!start || !old || !new) {
        Py_XDECREF(start), Py_XDECREF(old), Py_XDECREF(new);
        return -1;
    }
    /* A tuple subclass instance of length 4, filled in place (what tuple.__new__ does). */
    PyObject *edit = edit_type->tp_alloc(edit_type, 4);
    if (!edit) {
        Py_DECREF(start), Py_DECREF(old), Py_DECREF(new);
        return -1;
    }
    Py_INCREF(op_names[op]);
    PyTuple_SET_ITEM(edit, 0, op_names[op]);
    PyTuple_SET_ITEM(edit, 1, start);
    PyTuple_SET_ITEM(edit, 2, old);
    PyTuple_SET_ITEM(edit, 3, new);
    int rc = PyList_Append(out, edit);
    Py_DECREF(edit);
    return rc;
}

static PyObject *infer(PyObject *self, PyObject *args) {
    PyObject *a, *b;
    double ci, cd, cr;
    if (!PyArg_ParseTuple(args, "O!O!ddd", &PyTuple_Type, &a, &PyTuple_Type, &b, &ci, &cd, &cr)) return NULL;
    if (!edit_type) {
        PyErr_SetString(PyExc_RuntimeError, "set_edit_type() was not called");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(a), m = PyTuple_GET_SIZE(b);
    PyObject **A = &PyTuple_GET_ITEM(a, 0), **B = &PyTuple_GET_ITEM(b, 0);
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    Py_hash_t *ha = PyMem_Malloc(sizeof(Py_hash_t) * (n + m + 1));
    if (!ha) return PyErr_NoMemory();
    Py_hash_t *hb = ha + n;
    for (Py_ssize_t i = 0; i < n; i++)
        if ((ha[i] = PyObject_Hash(A[i])) == -1 && PyErr_Occurred()) goto fail_h;
    for (Py_ssize_t j = 0; j < m; j++)
        if ((hb[j] = PyObject_Hash(B[j])) == -1 && PyErr_Occurred()) goto fail_h;

    /* A common prefix and suffix are matched: always optimal when matches cost nothing. */
    Py_ssize_t s = 0, e = 0;
    int q;
    while (s < n && s < m && (q = tok_eq(A[s], B[s], ha[s], hb[s])) == 1) s++;
    if (PyErr_Occurred()) goto fail_h;
    while (e < n - s && e < m - s && (q = tok_eq(A[n - 1 - e], B[m - 1 - e], ha[n - 1 - e], hb[m - 1 - e])) == 1) e++;
    if (PyErr_Occurred()) goto fail_h;
    Py_ssize_t n2 = n - s - e, m2 = m - s - e, w = m2 + 1;
    if (n2 == 0 && m2 == 0) {
        PyMem_Free(ha);
        return out;
    }
    if ((size_t)(n2 + 1) > ((size_t)PY_SSIZE_T_MAX) / (size_t)w) {
        PyMem_Free(ha);
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    uint8_t *moves = PyMem_Malloc((size_t)(n2 + 1) * w);           /* bit 1 diagonal, 2 delete, 4 insert */
    uint8_t *match = PyMem_Malloc((size_t)(n2 + 1) * w);           /* token equality, reused by traceback */
    double *prev = PyMem_Malloc(sizeof(double) * 2 * w), *cur = prev + w;
    Py_ssize_t *nprev = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * w), *ncur = nprev + w; /* op counts */
    Py_ssize_t *ops = PyMem_Malloc(sizeof(Py_ssize_t) * 3 * (n2 + m2 + 1));
    if (!moves || !match || !prev || !nprev || !ops) {
        PyMem_Free(moves), PyMem_Free(match), PyMem_Free(prev), PyMem_Free(nprev), PyMem_Free(ops), PyMem_Free(ha);
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    /* Lexicographic DP: minimum cost, then fewest single-token operations (so that with
       costs 1,1,2 a replace beats a delete plus an insert of the same cost). */
    prev[0] = 0.0, nprev[0] = 0;
    for (Py_ssize_t j = 1; j <= m2; j++) prev[j] = j * ci, nprev[j] = j, moves[j] = 4;
    for (Py_ssize_t i = 1; i <= n2; i++) {
        cur[0] = i * cd, ncur[0] = i;
        moves[i * w] = 2;
        PyObject *x = A[s + i - 1];
        Py_hash_t hx = ha[s + i - 1];
        for (Py_ssize_t j = 1; j <= m2; j++) {
            int eq = tok_eq(x, B[s + j - 1], hx, hb[s + j - 1]);
            if (eq < 0) goto fail_all;
            match[i * w + j] = (uint8_t)eq;
            double c[3] = {prev[j - 1] + (eq ? 0.0 : cr), prev[j] + cd, cur[j - 1] + ci};
            Py_ssize_t k3[3] = {nprev[j - 1] + !eq, nprev[j] + 1, ncur[j - 1] + 1};
            double best = c[0] < c[1] ? c[0] : c[1];
            if (c[2] < best) best = c[2];
            double tol = 1e-9 * (best > 1.0 ? best : 1.0); /* float costs: near-equal sums are ties */
            Py_ssize_t fewest = PY_SSIZE_T_MAX;
            for (int t = 0; t < 3; t++)
                if (c[t] <= best + tol && k3[t] < fewest) fewest = k3[t];
            uint8_t mv = 0;
            for (int t = 0; t < 3; t++)
                if (c[t] <= best + tol && k3[t] == fewest) mv |= (uint8_t)(1 << t);
            moves[i * w + j] = mv;
            cur[j] = best, ncur[j] = fewest;
        }
        double *t = prev;
        prev = cur, cur = t;
        Py_ssize_t *nt = nprev;
        nprev = ncur, ncur = nt;
    }
    /* Walk back preferring match, insert, delete, replace: in source order a changed block then
       reads replaces, then deletes, then inserts. */
    Py_ssize_t k = 0, i = n2, j = m2;
    while (i > 0 || j > 0) {
        uint8_t mv = moves[i * w + j];
        if ((mv & 1) && i > 0 && j > 0 && match[i * w + j]) {
            i--, j--;
            continue;
        }
        if ((mv & 4) && j > 0) ops[3 * k] = 3, ops[3 * k + 1] = i, ops[3 * k + 2] = j - 1, j--;
        else if ((mv & 2) && i > 0) ops[3 * k] = 2, ops[3 * k + 1] = i - 1, ops[3 * k + 2] = j, i--;
        else ops[3 * k] = 1, ops[3 * k + 1] = i - 1, ops[3 * k + 2] = j - 1, i--, j--;
        k++;
    }
    /* Forward, merging runs of one kind that continue each other into span edits. */
    int op0 = 0;
    Py_ssize_t i0 = 0, i1 = 0, j0 = 0, j1 = 0;
    for (Py_ssize_t t = k - 1; t >= 0; t--) {
        int op = (int)ops[3 * t];
        Py_ssize_t oi = ops[3 * t + 1] + s, oj = ops[3 * t + 2] + s;
        if (op0 == op && i1 == oi) {
            if (op != 3) i1 = oi + 1;
            if (op != 2) j1 = oj + 1;
            continue;
        }
        if (op0 && append_edit(out, op0, i0, i1, j0, j1, a, b) < 0) goto fail_all;
        op0 = op, i0 = oi, i1 = (op == 3) ? oi : oi + 1, j0 = oj, j1 = (op == 2) ? oj : oj + 1;
    }
    if (op0 && append_edit(out, op0, i0, i1, j0, j1, a, b) < 0) goto fail_all;
    PyMem_Free(moves), PyMem_Free(match), PyMem_Free(prev < cur ? prev : cur), PyMem_Free(nprev < ncur ? nprev : ncur);
    PyMem_Free(ops), PyMem_Free(ha);
    return out;

fail_all:
    PyMem_Free(moves), PyMem_Free(match), PyMem_Free(prev < cur ? prev : cur), PyMem_Free(nprev < ncur ? nprev : ncur);
    PyMem_Free(ops);
fail_h:
    PyMem_Free(ha);
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"infer", infer, METH_VARARGS, "infer(a, b, ins, del, rep) -> list of Edit: a minimum-cost chain."},
    {"set_edit_type", set_edit_type, METH_O, "Register the Edit named tuple class."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cdp", "Compiled chain-of-edits DP.", -1, methods};

PyMODINIT_FUNC PyInit__cdp(void) {
    static const char *names[4] = {"replace", "replace", "delete", "insert"};
    for (int t = 0; t < 4; t++)
        if (!(op_names[t] = PyUnicode_InternFromString(names[t]))) return NULL;
    if (!(empty_tuple = PyTuple_New(0))) return NULL;
    return PyModule_Create(&module);
}
