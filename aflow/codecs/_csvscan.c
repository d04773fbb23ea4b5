/* One pass over a block of CSV lines of numbers: the rows of the lines in the plain
 * shape, written straight into a structured array; every other line is left to the
 * NumPy engine (see aflow/codecs/_csvnative.py, which builds the spec and decodes the
 * lines left over; a row this scanner writes is the row NumPy's engine reads).
 *
 * scan(block, spec, delimiter, itemsize, out, state) -> (lines, rows)
 *
 *   block     bytes: whole lines, each ending with a newline (a last line without one is
 *             read as if it had one)
 *   spec      int64 buffer, 7 a column: kind (1 signed int, 2 unsigned int, 3 float64,
 *             4 float32), size in bytes, offset in the record, lowest and highest value
 *             (ints), whether an empty field is read as the fill value, the fill value
 *   delimiter the field separator, one byte
 *   itemsize  the record's size in bytes
 *   out       writable buffer of records: the rows, in order, one for each line read
 *   state     writable uint8 buffer, one a line: 0 read into a row, 1 empty (no row),
 *             2 left to the NumPy engine
 *
 * The plain shape: the line holds as many fields as the spec has columns, separated by
 * the delimiter, and may end with "\r" before its newline; a line of white space only
 * (delimiters that are white space, "\r") is left over, blank to the NumPy engine. A
 * field is at most 100 bytes. An int field is an optional
 * "-" (signed columns only) and 1 to 19 digits, in the column's range. A float field is
 * an optional "-", digits with at most one ".", at least one digit, an optional exponent
 * ("e" or "E", an optional sign, 1 to 4 digits), or "nan", "inf", "infinity" in any case
 * ("-nan" is left over); the value is the correctly rounded double (exact arithmetic for
 * at most 19 significant digits and a power of ten up to 22 or 19, else strtod, checked to
 * have read the whole field: a locale whose decimal point is not "." leaves the field
 * over). A number beyond float64's range, or a finite one beyond float32's for a float32
 * column, is left over (the NumPy engine reports it). An empty field is NaN in a float
 * column, the fill value in an int column that has one (in its range), else left over.
 *
 * The GIL is released while scanning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { SIGNED = 1, UNSIGNED = 2, FLOAT64 = 3, FLOAT32 = 4 };
enum { ROW = 0, EMPTY = 1, LEFT = 2 };
#define FIELDS 7

static const double P10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                             1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                             1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
#define EXACT (UINT64_C(1) << 53)
#define WIDEST 100 /* longer numbers are left to the NumPy engine */
#define FLOAT32_LIMIT 0x1.ffffffp127 /* the least double that rounds to float32's infinity */

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

#ifdef __SIZEOF_INT128__
typedef unsigned __int128 u128;

static const uint64_t POW10[20] = {
    UINT64_C(1),
    UINT64_C(10),
    UINT64_C(100),
    UINT64_C(1000),
    UINT64_C(10000),
    UINT64_C(100000),
    UINT64_C(1000000),
    UINT64_C(10000000),
    UINT64_C(100000000),
    UINT64_C(1000000000),
    UINT64_C(10000000000),
    UINT64_C(100000000000),
    UINT64_C(1000000000000),
    UINT64_C(10000000000000),
    UINT64_C(100000000000000),
    UINT64_C(1000000000000000),
    UINT64_C(10000000000000000),
    UINT64_C(100000000000000000),
    UINT64_C(1000000000000000000),
    UINT64_C(10000000000000000000),
};

static int leading_zeros(u128 n)
{
    uint64_t hi = (uint64_t)(n >> 64), lo = (uint64_t)n;
    return hi ? __builtin_clzll(hi) : 64 + __builtin_clzll(lo);
}

/* the double nearest (n + f) * 2**e, n > 0, f = 0 or (sticky) some 0 < f < 1; rounding
 * half to even (the callers' values are normal doubles: 1e-19 to 2e38) */
static double nearest(u128 n, int e, int sticky)
{
    int bits = 128 - leading_zeros(n);
    if (bits > 54) {
        int drop = bits - 54;
        sticky |= (n & (((u128)1 << drop) - 1)) != 0;
        n >>= drop;
        e += drop;
    } else {
        n <<= 54 - bits;
        e -= 54 - bits;
    }
    uint64_t m = (uint64_t)n; /* 53 bits and the rounding bit */
    int half = (int)(m & 1);
    m >>= 1;
    e += 1;
    if (half && (sticky || (m & 1))) {
        m++;
        if (m >> 53) {
            m >>= 1;
            e++;
        }
    }
    return ldexp((double)m, e);
}

/* m * 10**exp10 for |exp10| <= 19, exactly in 128 bits and rounded once */
static double wide(uint64_t m, long exp10)
{
    if (exp10 >= 0)
        return nearest((u128)m * POW10[exp10], 0, 0);
    int shift = leading_zeros((u128)m);
    u128 num = (u128)m << shift, d = POW10[-exp10];
    u128 q = num / d; /* at least 64 bits: num >= 2**127, d < 2**64 */
    return nearest(q, -shift, num % d != 0);
}
#endif

static unsigned char lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* s[0:n] is `word` in any case */
static int is_word(const unsigned char *s, Py_ssize_t n, const char *word)
{
    if ((size_t)n != strlen(word))
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower(s[i]) != (unsigned char)word[i])
            return 0;
    return 1;
}

/* s[0:n] as an int of [lo, hi]: 0 if it is not one in the plain shape */
static int read_int(const unsigned char *s, Py_ssize_t n, int allow_minus, int64_t lo,
                    int64_t hi, int64_t *out)
{
    int neg = 0;
    if (n && s[0] == '-') {
        if (!allow_minus)
            return 0;
        neg = 1;
        s++;
        n--;
    }
    if (n < 1 || n > 19)
        return 0;
    uint64_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return 0;
        m = m * 10 + (uint64_t)(s[i] - '0'); /* 19 digits fit in 64 bits */
    }
    int64_t v;
    if (neg) {
        if (m > (uint64_t)INT64_MAX + 1)
            return 0;
        v = m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m;
    } else {
        if (m > (uint64_t)INT64_MAX)
            return 0;
        v = (int64_t)m;
    }
    if (v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

/* s[0:n] as a float: 0 if it is not one in the plain shape; s[n] must not continue a
 * number (a delimiter, "\r" or "\n", or the block's terminating NUL) */
static int read_float(const unsigned char *s, Py_ssize_t n, double *out)
{
    const unsigned char *p = s, *end = s + n;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p < end && !is_digit(*p) && *p != '.') {
        Py_ssize_t w = end - p;
        if (is_word(p, w, "inf") || is_word(p, w, "infinity")) {
            *out = neg ? -HUGE_VAL : HUGE_VAL;
            return 1;
        }
        if (!neg && is_word(p, w, "nan")) {
            *out = Py_NAN;
            return 1;
        }
        return 0;
    }
    uint64_t m = 0;
    int kept = 0, digits = 0, exact = 1;
    long exp10 = 0;
    for (; p < end && is_digit(*p); p++, digits++) {
        if (m == 0 && *p == '0')
            continue;
        if (kept < 19) {
            m = m * 10 + (uint64_t)(*p - '0');
            kept++;
        } else {
            exp10++;
            exact &= *p == '0';
        }
    }
    if (p < end && *p == '.') {
        for (p++; p < end && is_digit(*p); p++, digits++) {
            if (m == 0 && *p == '0') {
                exp10--;
                continue;
            }
            if (kept < 19) {
                m = m * 10 + (uint64_t)(*p - '0');
                kept++;
                exp10--;
            } else {
                exact &= *p == '0';
            }
        }
    }
    if (!digits)
        return 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        const unsigned char *e0 = p;
        long e = 0;
        for (; p < end && is_digit(*p); p++)
            e = e * 10 + (*p - '0');
        if (p == e0 || p - e0 > 4)
            return 0;
        exp10 += eneg ? -e : e;
    }
    if (p != end)
        return 0;
    double v;
    if (m == 0) {
        v = 0.0;
    } else if (exact && m <= EXACT && exp10 >= -22 && exp10 <= 22) {
        /* both exact doubles: one correctly rounded operation */
        v = exp10 < 0 ? (double)m / P10[-exp10] : (double)m * P10[exp10];
#ifdef __SIZEOF_INT128__
    } else if (exact && exp10 >= -19 && exp10 <= 19) {
        v = wide(m, exp10); /* 17 to 19 digits, as Python's repr writes a double */
#endif
    } else {
        /* strtod on a copy: it reads to a NUL, and the block need not have one */
        char text[WIDEST + 1], *stop;
        if (n > WIDEST)
            return 0;
        memcpy(text, s, (size_t)n);
        text[n] = 0;
        v = strtod(text, &stop);
        if (stop != text + n || isinf(v))
            return 0;
        *out = v;
        return 1;
    }
    *out = neg ? -v : v;
    return 1;
}

/* one field into its place in the record: 0 if the line is left over */
static int read_field(const unsigned char *s, Py_ssize_t n, const int64_t *col, char *record)
{
    int64_t kind = col[0], size = col[1];
    char *at = record + col[2];
    if (kind == FLOAT64 || kind == FLOAT32) {
        double v;
        if (n == 0)
            v = Py_NAN;
        else if (!read_float(s, n, &v))
            return 0;
        if (kind == FLOAT64) {
            memcpy(at, &v, 8);
        } else {
            if (!isinf(v) && fabs(v) >= FLOAT32_LIMIT)
                return 0; /* beyond float32's range: the NumPy engine reports it */
            float f = (float)v;
            memcpy(at, &f, 4);
        }
        return 1;
    }
    int64_t v;
    if (n == 0) {
        if (!col[5] || col[6] < col[3] || col[6] > col[4])
            return 0;
        v = col[6];
    } else if (!read_int(s, n, kind == SIGNED, col[3], col[4], &v)) {
        return 0;
    }
    if (size == 8) {
        memcpy(at, &v, 8);
    } else if (size == 4) {
        int32_t x = (int32_t)v;
        memcpy(at, &x, 4);
    } else if (size == 2) {
        int16_t x = (int16_t)v;
        memcpy(at, &x, 2);
    } else {
        int8_t x = (int8_t)v;
        memcpy(at, &x, 1);
    }
    return 1;
}

/* line s[a:e] (its newline excluded) into a record: 0 if it is left over */
static int read_line(const unsigned char *s, Py_ssize_t a, Py_ssize_t e, unsigned char delim,
                     int blank_delimiter, const int64_t *spec, Py_ssize_t ncols, char *record)
{
    if (e > a && s[e - 1] == '\r')
        e--;
    if (e == a)
        return 0; /* a lone "\r": a blank line, for the NumPy engine */
    Py_ssize_t at = a;
    if (blank_delimiter) {
        Py_ssize_t i = a;
        while (i < e && s[i] == delim)
            i++;
        if (i == e)
            return 0; /* white space only: a blank line, for the NumPy engine */
    }
    for (Py_ssize_t j = 0; j < ncols; j++) {
        Py_ssize_t b = at;
        while (b < e && s[b] != delim)
            b++;
        if ((b == e) != (j == ncols - 1))
            return 0; /* too few or too many fields */
        if (!read_field(s + at, b - at, spec + j * FIELDS, record))
            return 0;
        at = b + 1;
    }
    return 1;
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_buffer block, spec, out, state;
    int delimiter;
    Py_ssize_t itemsize;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*inw*w*", &block, &spec, &delimiter, &itemsize, &out,
                          &state))
        return NULL;
    Py_ssize_t ncols = spec.len / (Py_ssize_t)(FIELDS * sizeof(int64_t));
    Py_ssize_t capacity = state.len;
    const int64_t *sp = (const int64_t *)spec.buf;
    int bad_spec = ncols < 1 || spec.len % (Py_ssize_t)(FIELDS * sizeof(int64_t)) ||
                   (uintptr_t)spec.buf % sizeof(int64_t) || itemsize < 1 || delimiter < 1 ||
                   delimiter > 127 || (capacity && itemsize > out.len / capacity);
    for (Py_ssize_t j = 0; j < ncols && !bad_spec; j++) {
        const int64_t *c = sp + j * FIELDS;
        int64_t width = c[0] == FLOAT64 ? 8 : c[0] == FLOAT32 ? 4 : c[1];
        bad_spec = c[0] < SIGNED || c[0] > FLOAT32 || c[1] != width ||
                   (width != 1 && width != 2 && width != 4 && width != 8) || c[2] < 0 ||
                   c[2] > itemsize - width || c[3] > c[4];
    }
    if (bad_spec) {
        PyErr_SetString(PyExc_ValueError, "scan: bad arguments");
        goto done;
    }
    const unsigned char *s = (const unsigned char *)block.buf;
    Py_ssize_t size = block.len, lines = 0, rows = 0;
    char *records = (char *)out.buf;
    /* Python's white space (str.strip): a line of such delimiters only is blank */
    int blank_delimiter = delimiter == ' ' || (delimiter >= 9 && delimiter <= 13) ||
                          (delimiter >= 28 && delimiter <= 31);
    unsigned char *st = (unsigned char *)state.buf;
    int too_many = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t a = 0;
    while (a < size) {
        const unsigned char *nl = memchr(s + a, '\n', (size_t)(size - a));
        Py_ssize_t e = nl ? nl - s : size;
        if (lines == capacity) {
            too_many = 1;
            break;
        }
        if (e == a) {
            st[lines] = EMPTY;
        } else if (read_line(s, a, e, (unsigned char)delimiter, blank_delimiter, sp, ncols,
                             records + rows * itemsize)) {
            st[lines] = ROW;
            rows++;
        } else {
            st[lines] = LEFT;
        }
        lines++;
        a = e + 1;
    }
    Py_END_ALLOW_THREADS
    if (too_many) {
        PyErr_SetString(PyExc_ValueError, "scan: more lines than the buffers hold");
        goto done;
    }
    result = Py_BuildValue("nn", lines, rows);
done:
    PyBuffer_Release(&block);
    PyBuffer_Release(&spec);
    PyBuffer_Release(&out);
    PyBuffer_Release(&state);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "The rows of a block's CSV lines in the plain shape."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_csvscan", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__csvscan(void) { return PyModule_Create(&module); }
