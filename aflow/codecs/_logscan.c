/* One pass over a block of access log lines: where each token of a layout lies, for the
 * lines that have the layout's exact shape (see aflow/codecs/_logscan.py, which builds
 * the layout's spec and reads the result; the rules are those of the array path in
 * aflow/codecs/_logfast.py, a line this scanner accepts is one that path accepts).
 *
 * scan(block, spec, literals, optional, bounds, numbers, variants, newlines) -> lines
 * lines(block) -> how many newlines the block holds (the buffers' size)
 *
 *   block     bytes: whole lines, the last ending with a newline
 *   spec      int32 buffer, 8 a token: kind, shape, dash, spaces, time, literal offset,
 *             literal length, number (0: none; 1 + 2k: an int, 2 + 2k: a float, read
 *             into column k of ``numbers``)
 *   literals  bytes: the literal tokens' text
 *   optional  how many of the last tokens a line may lack
 *   bounds    writable int32 buffer, (lines, tokens, 2): each token's first byte and the
 *             byte after it (a quoted token without its quotes, a bracketed one without
 *             its brackets)
 *   numbers   writable float64 buffer, (lines, numbers): the tokens read as numbers, as
 *             the array path reads them (``\d+`` for an int, ``\d*.\d*`` with a digit
 *             for a float, at most 15 characters: exact, then one rounding; ``-``: 0 for
 *             an int, NaN for a float); a line with a number that does not read so does
 *             not have the shape
 *   variants  writable int8 buffer, (lines,): how many tokens the line lacks (0 to
 *             optional), or -1 if it does not have the layout's shape
 *   newlines  writable int64 buffer, (lines,): where each line's newline is
 *
 * The GIL is released while scanning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { BARE = 0, QUOTED = 1, BRACKET = 2, LITERAL = 3 };
enum { ANY = 0, DIGITS = 1, DIGITS3 = 2, NUMBER = 3 };
#define FIELDS 8
#define WIDE 15 /* the widest number the array path reads */

static const char TIME_SHAPE[] = "dd/aaa/dddd:dd:dd:dd sdddd";
#define TIME_WIDTH 26

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static const double P10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7,
                             1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};

/* s[lo:hi] as the array path reads a number (see the module's comment): 0 if it does not. */
static int read_number(const unsigned char *s, Py_ssize_t lo, Py_ssize_t hi, int floating,
                       double *out)
{
    Py_ssize_t w = hi - lo;
    if (w == 1 && s[lo] == '-') {
        *out = floating ? Py_NAN : 0.0;
        return 1;
    }
    if (w < 1 || w > WIDE)
        return 0;
    double value = 0.0; /* at most 15 digits: exact */
    int digits = 0, dots = 0, after = 0;
    for (Py_ssize_t i = lo; i < hi; i++) {
        unsigned char c = s[i];
        if (is_digit(c)) {
            value = value * 10.0 + (double)(c - '0');
            digits++;
            after += dots;
        } else if (c == '.' && floating && !dots) {
            dots = 1;
        } else {
            return 0;
        }
    }
    if (!digits)
        return 0;
    *out = after ? value / P10[after] : value; /* both exact: one rounding, as float() */
    return 1;
}

/* Whether s[lo:hi] has ``shape`` (or is a lone dash, where ``dash``). */
static int has_shape(const unsigned char *s, Py_ssize_t lo, Py_ssize_t hi, int shape, int dash)
{
    Py_ssize_t w = hi - lo;
    if (dash && w == 1 && s[lo] == '-')
        return 1;
    if (shape == DIGITS3 && w != 3)
        return 0;
    if (w < 1 || w > WIDE)
        return 0;
    for (Py_ssize_t i = lo; i < hi; i++) {
        unsigned char c = s[i];
        if (!is_digit(c) && !(shape == NUMBER && c == '.'))
            return 0;
    }
    return 1;
}

/* TIME_SHAPE as byte classes: 'd' a digit, 'a' a letter, 's' a sign, else the byte. */
static int has_time_shape(const unsigned char *s, Py_ssize_t lo, Py_ssize_t hi)
{
    if (hi - lo != TIME_WIDTH)
        return 0;
    unsigned bad = 0; /* branch-free over the 26 bytes */
    for (int i = 0; i < TIME_WIDTH; i++) {
        unsigned c = s[lo + i];
        switch (TIME_SHAPE[i]) {
        case 'd':
            bad |= c - '0' > 9u;
            break;
        case 'a':
            bad |= (c | 0x20u) - 'a' > 25u;
            break;
        case 's':
            bad |= (c != '+') & (c != '-');
            break;
        default:
            bad |= c != (unsigned char)TIME_SHAPE[i];
        }
    }
    return !bad;
}

/* Whether the line s[a:e] holds only printable ASCII without a backslash (the array
 * path's clean lines). A branch-free pass the compiler vectorizes. */
static int clean_line(const unsigned char *s, Py_ssize_t a, Py_ssize_t e)
{
    unsigned bad = 0;
    for (Py_ssize_t i = a; i < e; i++) {
        unsigned c = s[i];
        bad |= (c - 32u > 94u) | (c == 92u);
    }
    return !bad;
}

/* The tokens of the clean line s[a:e] (e: its newline): how many it has (the layout's,
 * or fewer by at most ``optional``), their bounds in ``out`` and its numbers in
 * ``numbers``; -1 if it does not have the shape. */
static int scan_line(const unsigned char *s, Py_ssize_t a, Py_ssize_t e, const int32_t *spec,
                     int ntok, int optional, const unsigned char *lits, int32_t *out,
                     double *numbers)
{
    Py_ssize_t p = a;
    for (int j = 0; j < ntok; j++) {
        const int32_t *t = spec + FIELDS * j;
        Py_ssize_t lo, hi;
        switch (t[0]) {
        case BARE:
            lo = p;
            while (p < e && s[p] != ' ') {
                if (s[p] == '"') /* a quote is a break of its own */
                    return -1;
                p++;
            }
            hi = p;
            if (hi == lo)
                return -1;
            if (t[1] != ANY && !has_shape(s, lo, hi, t[1], t[2]))
                return -1;
            break;
        case QUOTED: {
            if (p >= e || s[p] != '"')
                return -1;
            lo = ++p;
            const unsigned char *q = memchr(s + p, '"', (size_t)(e - p));
            if (q == NULL)
                return -1;
            hi = q - s;
            p = hi + 1;
            break;
        }
        case BRACKET: {
            int spaces = 0;
            if (p >= e || s[p] != '[')
                return -1;
            lo = ++p;
            while (p < e) {
                if (s[p] == ' ') {
                    if (spaces == t[3])
                        break;
                    spaces++;
                } else if (s[p] == '"') {
                    return -1;
                }
                p++;
            }
            if (spaces != t[3] || p - 1 < lo || s[p - 1] != ']')
                return -1;
            hi = p - 1;
            if (t[4] && !has_time_shape(s, lo, hi))
                return -1;
            break;
        }
        case LITERAL:
            lo = p;
            hi = p + t[6];
            if (hi > e || memcmp(s + p, lits + t[5], (size_t)t[6]) != 0)
                return -1;
            p = hi;
            break;
        default:
            return -1;
        }
        out[2 * j] = (int32_t)lo;
        out[2 * j + 1] = (int32_t)hi;
        if (t[7] && !read_number(s, lo, hi, !(t[7] & 1), numbers + (t[7] - 1) / 2))
            return -1;
        if (p == e)
            return j + 1 >= ntok - optional ? j + 1 : -1;
        if (s[p] != ' ')
            return -1;
        p++;
    }
    return -1; /* more after the last token */
}

/* lines(block) -> how many newlines ``block`` holds. */
static PyObject *lines(PyObject *self, PyObject *args)
{
    Py_buffer block;
    Py_ssize_t n = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &block))
        return NULL;
    const char *s = block.buf, *end = s + block.len;
    Py_BEGIN_ALLOW_THREADS
    while (s < end && (s = memchr(s, '\n', (size_t)(end - s))) != NULL) {
        n++;
        s++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&block);
    return PyLong_FromSsize_t(n);
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_buffer block, spec, lits, bounds, numbers, variants, newlines;
    int optional;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*iw*w*w*w*", &block, &spec, &lits, &optional, &bounds,
                          &numbers, &variants, &newlines))
        return NULL;
    int ntok = (int)(spec.len / (FIELDS * (Py_ssize_t)sizeof(int32_t)));
    Py_ssize_t size = block.len, count = 0, capacity = variants.len;
    Py_ssize_t nnum = 0;
    int bad_spec = spec.len != ntok * FIELDS * (Py_ssize_t)sizeof(int32_t);
    for (int j = 0; j < ntok && !bad_spec; j++) {
        const int32_t *t = (const int32_t *)spec.buf + FIELDS * j;
        bad_spec = t[0] < BARE || t[0] > LITERAL || t[1] < ANY || t[1] > NUMBER || t[3] < 0 ||
                   t[5] < 0 || t[6] < 0 || (Py_ssize_t)t[5] + t[6] > lits.len || t[7] < 0;
        if (t[7] && (t[7] + 1) / 2 > nnum)
            nnum = (t[7] + 1) / 2;
    }
    if (bad_spec || ntok < 1 || optional < 0 || optional >= ntok || size >= INT32_MAX ||
        bounds.len < capacity * ntok * 2 * (Py_ssize_t)sizeof(int32_t) ||
        numbers.len < capacity * nnum * (Py_ssize_t)sizeof(double) ||
        newlines.len < capacity * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "scan: bad arguments");
        goto done;
    }
    const unsigned char *s = (const unsigned char *)block.buf;
    int32_t *out = (int32_t *)bounds.buf;
    int8_t *var = (int8_t *)variants.buf;
    int64_t *ends = (int64_t *)newlines.buf;
    double *nums = (double *)numbers.buf;
    int too_many = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t a = 0;
    while (a < size) {
        const unsigned char *nl = memchr(s + a, '\n', (size_t)(size - a));
        Py_ssize_t e = nl ? nl - s : size;
        if (count == capacity) {
            too_many = 1;
            break;
        }
        int got = -1;
        if (clean_line(s, a, e))
            got = scan_line(s, a, e, (const int32_t *)spec.buf, ntok, optional,
                            (const unsigned char *)lits.buf, out + count * ntok * 2,
                            nums + count * nnum);
        var[count] = (int8_t)(got < 0 ? -1 : ntok - got);
        ends[count] = e;
        count++;
        a = e + 1;
    }
    Py_END_ALLOW_THREADS
    if (too_many) {
        PyErr_SetString(PyExc_ValueError, "scan: more count than the buffers hold");
        goto done;
    }
    result = PyLong_FromSsize_t(count);
done:
    PyBuffer_Release(&block);
    PyBuffer_Release(&spec);
    PyBuffer_Release(&lits);
    PyBuffer_Release(&bounds);
    PyBuffer_Release(&numbers);
    PyBuffer_Release(&variants);
    PyBuffer_Release(&newlines);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Where each token of a layout lies in each line of a block."},
    {"lines", lines, METH_VARARGS, "How many newlines a block holds."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_logscan", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__logscan(void) { return PyModule_Create(&module); }
