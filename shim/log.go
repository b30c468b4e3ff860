package shim

import (
	"io"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the structured logger IVSHIM_LOG asks for, writing to w, with the world
// rank on every entry. With logging off it is a no-op logger, which costs nothing.
func newLogger(spec LogSpec, w io.Writer, rank int) *zap.Logger {
	if spec.Format == "" {
		return zap.NewNop()
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.TimeEncoderOfLayout(time.RFC3339Nano)
	enc := zapcore.NewJSONEncoder(ec)
	if spec.Format == "console" {
		enc = zapcore.NewConsoleEncoder(ec)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), spec.Level)
	return zap.New(core).Named("ivshim").With(zap.Int("rank", rank))
}
