package l7proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Bodies. The proxy forwards a body's bytes as they come and parses its
// framing only to find where it ends. It flushes what it forwarded
// whenever the next bytes are not there yet, so a streamed body (chunks,
// events) reaches the other side as the sender writes it, while a body
// that came in one read goes out in one write.

// readError and writeError tell the sides of a copy apart: for a request
// body a failed read is the client's, a failed write the server's.
type readError struct{ err error }

func (e *readError) Error() string { return "read: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

type writeError struct{ err error }

func (e *writeError) Error() string { return "write: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// chunkError is a chunked body the proxy cannot frame.
type chunkError struct{ msg string }

func (e *chunkError) Error() string { return "chunked body: " + e.msg }

const (
	// maxChunkLine bounds a chunk's size line, extensions included.
	maxChunkLine = 4096
	// maxTrailer bounds a chunked body's trailer section.
	maxTrailer = 64 << 10
)

func readErr(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return &readError{err}
}

// await makes sure r holds n bytes (n at most its size), flushing w first
// when it does not.
func await(w *bufio.Writer, r *bufio.Reader, n int) error {
	if r.Buffered() >= n {
		return nil
	}
	if err := w.Flush(); err != nil {
		return &writeError{err}
	}
	if _, err := r.Peek(n); err != nil {
		return readErr(err)
	}
	return nil
}

// copyFixed forwards n bytes.
func copyFixed(w *bufio.Writer, r *bufio.Reader, n int64) error {
	for n > 0 {
		if err := await(w, r, 1); err != nil {
			return err
		}
		k := r.Buffered()
		if int64(k) > n {
			k = int(n)
		}
		b, _ := r.Peek(k)
		if _, err := w.Write(b); err != nil {
			return &writeError{err}
		}
		_, _ = r.Discard(k)
		n -= int64(k)
	}
	return nil
}

// copyToEOF forwards what comes until r's end.
func copyToEOF(w *bufio.Writer, r *bufio.Reader) error {
	for {
		if err := await(w, r, 1); err != nil {
			var re *readError
			if errors.As(err, &re) && re.err == io.ErrUnexpectedEOF {
				return nil
			}
			return err
		}
		b, _ := r.Peek(r.Buffered())
		if _, err := w.Write(b); err != nil {
			return &writeError{err}
		}
		_, _ = r.Discard(len(b))
	}
}

// readLine returns the next line of r, through its LF, of at most max
// bytes; it flushes w first when the line is not all there.
func readLine(w *bufio.Writer, r *bufio.Reader, max int) ([]byte, error) {
	if b, _ := r.Peek(r.Buffered()); bytes.IndexByte(b, '\n') < 0 {
		if err := w.Flush(); err != nil {
			return nil, &writeError{err}
		}
	}
	line, err := r.ReadSlice('\n')
	if err == bufio.ErrBufferFull || err == nil && len(line) > max {
		return nil, &chunkError{"line too long"}
	}
	if err != nil {
		return nil, readErr(err)
	}
	return line, nil
}

// chunkSize parses a chunk's size line (RFC 9112 7.1): hex digits, then
// extensions after a semicolon, then CRLF. Whitespace before the
// semicolon is refused, as Go's server refuses it.
func chunkSize(line []byte) (int64, error) {
	if !bytes.HasSuffix(line, []byte("\r\n")) {
		return 0, &chunkError{"size line not ended by CRLF"}
	}
	line = line[:len(line)-2]
	var n int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto ext
		}
		if i == 15 {
			return 0, &chunkError{"chunk size too large"}
		}
		n = n<<4 | int64(d)
	}
ext:
	if i == 0 {
		return 0, &chunkError{fmt.Sprintf("size line %q without a size", clip(line))}
	}
	if rest := line[i:]; len(rest) > 0 {
		if rest[0] != ';' {
			return 0, &chunkError{fmt.Sprintf("size line %q: not a size", clip(line))}
		}
		for _, c := range rest {
			if isCTL(c) && c != '\t' {
				return 0, &chunkError{fmt.Sprintf("control character %#x in a chunk extension", c)}
			}
		}
	}
	return n, nil
}

// copyChunked forwards a chunked body, trailer section included.
func copyChunked(w *bufio.Writer, r *bufio.Reader) error {
	for {
		line, err := readLine(w, r, maxChunkLine)
		if err != nil {
			return err
		}
		n, err := chunkSize(line)
		if err != nil {
			return err
		}
		if _, err := w.Write(line); err != nil {
			return &writeError{err}
		}
		if n == 0 {
			break
		}
		if err := copyFixed(w, r, n); err != nil {
			return err
		}
		if err := await(w, r, 2); err != nil {
			return err
		}
		crlf, _ := r.Peek(2)
		if crlf[0] != '\r' || crlf[1] != '\n' {
			return &chunkError{"chunk data not followed by CRLF"}
		}
		if _, err := w.Write(crlf); err != nil {
			return &writeError{err}
		}
		_, _ = r.Discard(2)
	}
	for total := 0; ; {
		line, err := readLine(w, r, maxTrailer)
		if err != nil {
			return err
		}
		if total += len(line); total > maxTrailer {
			return &chunkError{"trailer section too large"}
		}
		if !bytes.HasSuffix(line, []byte("\r\n")) {
			return &chunkError{"trailer line not ended by CRLF"}
		}
		if len(line) > 2 {
			if line[0] == ' ' || line[0] == '\t' {
				return &chunkError{"folded trailer line"}
			}
			if _, _, err := field(line[:len(line)-2]); err != nil {
				return &chunkError{"trailer: " + err.Error()}
			}
		}
		if _, err := w.Write(line); err != nil {
			return &writeError{err}
		}
		if len(line) == 2 {
			return nil
		}
	}
}
