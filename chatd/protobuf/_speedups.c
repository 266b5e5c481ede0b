/*
 * chatd.protobuf._speedups: the protobuf chat's hot path in C.
 *
 * Three functions, each the exact equivalent of a pure-Python function of
 * chatd/protobuf/framing.py (whose docstrings are the specification), which
 * stays the reference: tests/test_speedups.py feeds both the same bytes and
 * requires the same results, and the whole test suite runs once with this
 * module and once without it (CHATD_SPEEDUPS=off).
 *
 *   scan_delimited  = framing._scanDelimited
 *   scan_raw        = framing._scanRaw
 *   classify_send   = framing._classifySend
 *   encode_delivery = framing._encodeDelivery
 *
 * Where C could only approximate Python (a varint above 64 bits), it stops
 * and answers FALLBACK with its state, and the caller carries on in Python
 * from there: the module is never less exact than the reference.
 *
 * docs/performance.md ("The compiled hot path") says why it exists.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* The error codes, shared with framing.py (E_*). */
enum {
    E_NONE = 0,
    E_VARINT = 1,        /* a varint is longer than ten bytes */
    E_TOO_LARGE = 2,     /* delimited: a length prefix above the maximum */
    E_FIELD_ZERO = 3,    /* raw: field number 0 */
    E_WIRE_TYPE = 4,     /* raw: wire type 3, 4, 6 or 7 */
    E_FIELD_LARGE = 5,   /* raw: a LEN field above the maximum */
    E_REQUEST_LARGE = 6, /* raw: a request above the maximum */
    E_FALLBACK = 7       /* a varint above 64 bits: go on in Python */
};

/* Protobuf wire types. */
enum { VARINT = 0, I64 = 1, LEN = 2, I32 = 5 };

/* read_varint's answers. */
enum { V_OK = 0, V_SHORT = 1, V_LONG = 2, V_WIDE = 3 };

/*
 * The varint at d[*pos:end]: V_OK (value in *out, *pos after it), V_SHORT
 * when the bytes end inside it, V_LONG for more than ten bytes (Python's
 * MalformedFrame) and V_WIDE for a value that needs more than 64 bits.
 */
static int
read_varint(const unsigned char *d, Py_ssize_t end, Py_ssize_t *pos,
            uint64_t *out)
{
    Py_ssize_t p = *pos;
    uint64_t result = 0;
    int shift = 0;
    int wide = 0;

    while (p < end) {
        unsigned char byte = d[p++];
        uint64_t bits = byte & 0x7F;
        if (shift < 64) {
            if (shift > 57 && (bits >> (64 - shift)) != 0)
                wide = 1;
            result |= bits << shift;
        } else if (bits) {
            wide = 1;
        }
        if (byte < 0x80) {
            if (wide)
                return V_WIDE;
            *out = result;
            *pos = p;
            return V_OK;
        }
        shift += 7;
        if (shift >= 70)
            return V_LONG;
    }
    return V_SHORT;
}

/*
 * A simple SEND_MESSAGE request (framing.classifySend): option 4, then a
 * messg with a non-empty receiver, maybe a sender, and a non-empty text, in
 * that order, each once, all valid UTF-8 where chatd reads it. Sets *item to
 * (receiver, text) and answers 1; answers 0 for any other request, -1 on a
 * Python error.
 */
static int
classify_send(const unsigned char *f, Py_ssize_t n, PyObject **item)
{
    Py_ssize_t p = 3, r, t;
    uint64_t length, lr, ls, lt;
    PyObject *receiver, *text;

    if (n < 4 || f[0] != 0x08 || f[1] != 0x04 || f[2] != 0x2a)
        return 0;
    if (read_varint(f, n, &p, &length) != V_OK || length != (uint64_t)(n - p))
        return 0;
    if (p >= n || f[p] != 0x0a)
        return 0;
    p++;
    if (read_varint(f, n, &p, &lr) != V_OK || lr > (uint64_t)(n - p))
        return 0;
    r = p;
    p += (Py_ssize_t)lr;
    if (p < n && f[p] == 0x12) {
        p++;
        if (read_varint(f, n, &p, &ls) != V_OK || ls > (uint64_t)(n - p))
            return 0;
        p += (Py_ssize_t)ls;
    }
    if (p >= n || f[p] != 0x1a)
        return 0;
    p++;
    if (read_varint(f, n, &p, &lt) != V_OK || lt != (uint64_t)(n - p))
        return 0;
    t = p;
    if (lr == 0 || lt == 0)
        return 0;
    receiver = PyUnicode_DecodeUTF8((const char *)f + r, (Py_ssize_t)lr, "strict");
    if (receiver == NULL)
        goto invalid;
    text = PyUnicode_DecodeUTF8((const char *)f + t, (Py_ssize_t)lt, "strict");
    if (text == NULL) {
        Py_DECREF(receiver);
        goto invalid;
    }
    *item = PyTuple_Pack(2, receiver, text);
    Py_DECREF(receiver);
    Py_DECREF(text);
    return *item == NULL ? -1 : 1;

invalid:
    /* Not UTF-8: the general path refuses it in the protocol's terms. */
    if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* Append frame d[start:stop] to items: classified, or as bytes. */
static int
emit(PyObject *items, const unsigned char *d, Py_ssize_t start,
     Py_ssize_t stop, int classify)
{
    PyObject *item = NULL;
    int rc = 0;

    if (classify) {
        rc = classify_send(d + start, stop - start, &item);
        if (rc < 0)
            return -1;
    }
    if (rc == 0) {
        item = PyBytes_FromStringAndSize((const char *)d + start, stop - start);
        if (item == NULL)
            return -1;
    }
    rc = PyList_Append(items, item);
    Py_DECREF(item);
    return rc;
}

PyDoc_STRVAR(scan_delimited_doc,
"scan_delimited(buf, max_frame, classify) -> (items, consumed, error, at)\n\n"
"chatd.protobuf.framing._scanDelimited, in C.");

static PyObject *
scan_delimited(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t maxFrame;
    int classify;
    PyObject *items, *result;
    Py_ssize_t pos = 0, end, at = 0;
    const unsigned char *d;
    int error = E_NONE;

    if (!PyArg_ParseTuple(args, "y*np:scan_delimited", &view, &maxFrame, &classify))
        return NULL;
    items = PyList_New(0);
    if (items == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    d = view.buf;
    end = view.len;
    while (pos < end) {
        Py_ssize_t start = pos;
        uint64_t length;
        int v = read_varint(d, end, &start, &length);
        if (v == V_SHORT)
            break;
        if (v == V_LONG) {
            error = E_VARINT;
            at = pos;
            break;
        }
        if (v == V_WIDE || maxFrame < 0 || length > (uint64_t)maxFrame) {
            error = E_TOO_LARGE;
            at = pos;
            break;
        }
        if ((uint64_t)(end - start) < length)
            break;
        if (emit(items, d, start, start + (Py_ssize_t)length, classify) < 0) {
            Py_DECREF(items);
            PyBuffer_Release(&view);
            return NULL;
        }
        pos = start + (Py_ssize_t)length;
    }
    PyBuffer_Release(&view);
    result = Py_BuildValue("(Nnin)", items, pos, error, at);
    return result;
}

PyDoc_STRVAR(scan_raw_doc,
"scan_raw(buf, pos, start, last_field, fields, option, max_frame, classify)\n"
"-> (items, pos, start, last_field, fields, option, ended_by_zero, error, at)\n\n"
"chatd.protobuf.framing._scanRaw, in C.");

static PyObject *
scan_raw(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, start, maxFrame, at = 0;
    unsigned long long lastFieldArg, fieldsArg, optionArg;
    uint64_t lastField, fields, option;
    int classify, endedByZero = 0, error = E_NONE;
    PyObject *items;
    const unsigned char *d;
    Py_ssize_t end;

    if (!PyArg_ParseTuple(args, "y*nnKKKnp:scan_raw", &view, &pos, &start,
                          &lastFieldArg, &fieldsArg, &optionArg, &maxFrame,
                          &classify))
        return NULL;
    lastField = lastFieldArg;
    fields = fieldsArg;
    option = optionArg;
    items = PyList_New(0);
    if (items == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    d = view.buf;
    end = view.len;
    if (pos < 0 || start < 0 || pos > end || start > pos) {
        PyBuffer_Release(&view);
        Py_DECREF(items);
        PyErr_SetString(PyExc_ValueError, "scan_raw: positions outside the buffer");
        return NULL;
    }
    while (pos < end) {
        uint64_t tag = d[pos], field;
        Py_ssize_t valueStart, valueEnd;
        int wireType;

        if (tag == 0) {
            if (pos == start) {
                /* A terminator after the previous message, or padding. */
                start = pos = pos + 1;
                continue;
            }
            if (emit(items, d, start, pos, classify) < 0)
                goto fail;
            start = pos = pos + 1;
            lastField = fields = option = 0;
            endedByZero = 1;
            continue;
        }
        if (tag < 0x80) {
            valueStart = pos + 1;
        } else {
            int v;
            valueStart = pos;
            v = read_varint(d, end, &valueStart, &tag);
            if (v == V_SHORT)
                break;
            if (v != V_OK) {
                error = v == V_LONG ? E_VARINT : E_FALLBACK;
                at = pos;
                break;
            }
        }
        field = tag >> 3;
        wireType = (int)(tag & 7);
        if (field == 0) {
            error = E_FIELD_ZERO;
            at = pos;
            break;
        }
        if (field <= lastField) {
            /* Not ascending: this tag starts the next message. */
            if (emit(items, d, start, pos, classify) < 0)
                goto fail;
            start = pos;
            lastField = fields = option = 0;
            continue;
        }
        if (wireType == VARINT) {
            uint64_t ignored;
            Py_ssize_t p = valueStart;
            int v = read_varint(d, end, &p, &ignored);
            if (v == V_SHORT)
                break;
            if (v == V_LONG) {
                error = E_VARINT;
                at = valueStart;
                break;
            }
            if (v == V_WIDE) {
                /* Python keeps the whole option value; so does it go on. */
                error = E_FALLBACK;
                at = pos;
                break;
            }
            valueEnd = p;
        } else if (wireType == LEN) {
            uint64_t length;
            Py_ssize_t p = valueStart;
            int v = read_varint(d, end, &p, &length);
            if (v == V_SHORT)
                break;
            if (v == V_LONG) {
                error = E_VARINT;
                at = valueStart;
                break;
            }
            if (v == V_WIDE || length > (uint64_t)maxFrame) {
                error = E_FIELD_LARGE;
                at = valueStart;
                break;
            }
            if ((uint64_t)(end - p) < length)
                break;
            valueEnd = p + (Py_ssize_t)length;
        } else if (wireType == I64) {
            if (end - valueStart < 8)
                break;
            valueEnd = valueStart + 8;
        } else if (wireType == I32) {
            if (end - valueStart < 4)
                break;
            valueEnd = valueStart + 4;
        } else {
            error = E_WIRE_TYPE;
            at = pos;
            break;
        }
        if (valueEnd - start > maxFrame) {
            error = E_REQUEST_LARGE;
            at = pos;
            break;
        }
        if (field == 1 && wireType == VARINT) {
            Py_ssize_t p = valueStart;
            read_varint(d, end, &p, &option);
        }
        if (field < 64)
            fields |= (uint64_t)1 << field;
        lastField = field;
        pos = valueEnd;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(NnnKKKiin)", items, pos, start,
                         (unsigned long long)lastField,
                         (unsigned long long)fields,
                         (unsigned long long)option, endedByZero, error, at);

fail:
    PyBuffer_Release(&view);
    Py_DECREF(items);
    return NULL;
}

/* The bytes of the varint of v at out; how many. */
static Py_ssize_t
put_varint(unsigned char *out, uint64_t v)
{
    Py_ssize_t n = 0;
    while (v > 0x7F) {
        out[n++] = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    out[n++] = (unsigned char)v;
    return n;
}

static Py_ssize_t
varint_size(uint64_t v)
{
    Py_ssize_t n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

/* ServerResponse option = SEND_MESSAGE, code = SUCCESSFUL, then messg. */
static const unsigned char DELIVERY_PREFIX[5] = {0x08, 0x04, 0x10, 0x01, 0x32};

PyDoc_STRVAR(encode_delivery_doc,
"encode_delivery(head, text, delimited) -> bytes\n\n"
"chatd.protobuf.framing._encodeDelivery, in C.");

static PyObject *
encode_delivery(PyObject *self, PyObject *args)
{
    Py_buffer head;
    PyObject *textObj, *result;
    int delimited;
    const char *t;
    Py_ssize_t lt, size, total, n = 0;
    unsigned char *out;

    if (!PyArg_ParseTuple(args, "y*Up:encode_delivery", &head, &textObj, &delimited))
        return NULL;
    /* An ASCII str's UTF-8 is its own data: no copy. */
    t = PyUnicode_AsUTF8AndSize(textObj, &lt);
    if (t == NULL) {
        PyBuffer_Release(&head);
        return NULL;
    }
    /* Message = head, then text (field 3). */
    size = head.len + 1 + varint_size((uint64_t)lt) + lt;
    /* ServerResponse = prefix, messg's length, Message. */
    total = 5 + varint_size((uint64_t)size) + size;
    result = PyBytes_FromStringAndSize(
        NULL, total + (delimited ? varint_size((uint64_t)total) : 0));
    if (result == NULL) {
        PyBuffer_Release(&head);
        return NULL;
    }
    out = (unsigned char *)PyBytes_AS_STRING(result);
    if (delimited)
        n += put_varint(out + n, (uint64_t)total);
    memcpy(out + n, DELIVERY_PREFIX, 5);
    n += 5;
    n += put_varint(out + n, (uint64_t)size);
    memcpy(out + n, head.buf, head.len);
    n += head.len;
    out[n++] = 0x1a;
    n += put_varint(out + n, (uint64_t)lt);
    memcpy(out + n, t, lt);
    PyBuffer_Release(&head);
    return result;
}

PyDoc_STRVAR(classify_send_doc,
"classify_send(frame) -> (receiver, text) or None\n\n"
"chatd.protobuf.framing._classifySend, in C.");

static PyObject *
classify_send_py(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    PyObject *item = NULL;
    int rc;

    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    rc = classify_send(view.buf, view.len, &item);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    return item;
}

static PyMethodDef methods[] = {
    {"classify_send", classify_send_py, METH_O, classify_send_doc},
    {"scan_delimited", scan_delimited, METH_VARARGS, scan_delimited_doc},
    {"scan_raw", scan_raw, METH_VARARGS, scan_raw_doc},
    {"encode_delivery", encode_delivery, METH_VARARGS, encode_delivery_doc},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "chatd.protobuf._speedups",
    "The protobuf chat's hot path in C (see chatd/protobuf/framing.py).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
