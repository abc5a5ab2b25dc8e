package main

import (
	"bytes"
	"encoding/xml"
	"io"
	"net/http"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// The envelope and fault types below copy the simulator's unexported ones
// (simulator.go), so answers we write deserialize in clients exactly like the
// simulator's own: pyvmomi maps a "<Kind>Fault" detail to vim.fault.<Kind>.

type soapEnvelope struct {
	XMLName xml.Name    `xml:"soapenv:Envelope"`
	Enc     string      `xml:"xmlns:soapenc,attr"`
	Env     string      `xml:"xmlns:soapenv,attr"`
	XSD     string      `xml:"xmlns:xsd,attr"`
	XSI     string      `xml:"xmlns:xsi,attr"`
	Body    interface{} `xml:"soapenv:Body"`
}

type faultDetail struct {
	Fault types.BaseMethodFault
}

func (d *faultDetail) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	kind := reflect.TypeOf(d.Fault).Elem().Name()
	start.Name.Local = kind + "Fault"
	start.Attr = append(start.Attr,
		xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: kind})
	return e.EncodeElement(d.Fault, start)
}

type soapFault struct {
	XMLName xml.Name `xml:"soapenv:Fault"`
	Code    string   `xml:"faultcode"`
	String  string   `xml:"faultstring"`
	Detail  struct {
		Fault *faultDetail
	} `xml:"detail"`
}

func writeEnvelope(w http.ResponseWriter, status int, body interface{}) {
	var out bytes.Buffer
	out.WriteString(xml.Header)
	err := xml.NewEncoder(&out).Encode(&soapEnvelope{
		Enc:  "http://schemas.xmlsoap.org/soap/encoding/",
		Env:  "http://schemas.xmlsoap.org/soap/envelope/",
		XSD:  "http://www.w3.org/2001/XMLSchema",
		XSI:  "http://www.w3.org/2001/XMLSchema-instance",
		Body: body,
	})
	if err != nil {
		http.Error(w, "vcsim: encoding response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(out.Bytes())
}

// writeFault answers with a SOAP fault carrying fault as its detail.
func writeFault(w http.ResponseWriter, msg string, fault types.BaseMethodFault) {
	f := &soapFault{Code: "ServerFaultCode", String: msg}
	f.Detail.Fault = &faultDetail{fault}
	writeEnvelope(w, http.StatusInternalServerError, struct{ Fault *soapFault }{f})
}

type queryChangedDiskAreasBody struct {
	Res *types.QueryChangedDiskAreasResponse `xml:"urn:vim25 QueryChangedDiskAreasResponse"`
}

func writeDiskChangeInfo(w http.ResponseWriter, info types.DiskChangeInfo) {
	writeEnvelope(w, http.StatusOK, &queryChangedDiskAreasBody{
		Res: &types.QueryChangedDiskAreasResponse{Returnval: info},
	})
}

// typeFunc resolves vim25 type names, also when a client prefixed them with a
// namespace ("ns1:TraversalSpec"), as the simulator's own decoder does.
func typeFunc() func(string) (reflect.Type, bool) {
	vim := types.TypeFunc()
	return func(name string) (reflect.Type, bool) {
		if t, ok := vim(name); ok {
			return t, ok
		}
		if i := strings.IndexByte(name, ':'); i >= 0 {
			return vim(name[i+1:])
		}
		return nil, false
	}
}

var decodeType = typeFunc()

// decodeRequest decodes a SOAP request body into its govmomi request type.
func decodeRequest(body []byte) (*simulator.Method, error) {
	return simulator.UnmarshalBody(decodeType, body)
}

// recorder buffers a response of the wrapped handler so that we can inspect it
// and finish our own work before the client sees it.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}, status: http.StatusOK} }

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(status int)      { r.status = status }

func (r *recorder) flush(w http.ResponseWriter) {
	for k, v := range r.header {
		w.Header()[k] = v
	}
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body.Bytes())
}

// returnval extracts the first <returnval> managed object reference of a
// recorded SOAP response (the Task of a *_Task method).
func (r *recorder) returnval() (types.ManagedObjectReference, bool) {
	var ref types.ManagedObjectReference
	d := xml.NewDecoder(bytes.NewReader(r.body.Bytes()))
	for {
		tok, err := d.Token()
		if err != nil {
			return ref, false
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "returnval" {
			if err := d.DecodeElement(&ref, &se); err != nil {
				return ref, false
			}
			return ref, ref.Value != ""
		}
	}
}

// isFault reports whether the recorded response is a SOAP fault of kind.
func (r *recorder) isFault(kind string) bool {
	return r.status == http.StatusInternalServerError &&
		bytes.Contains(r.body.Bytes(), []byte("<"+kind+"Fault "))
}

// peekSOAP returns the body of a SOAP call (a POST to /sdk), left readable for the
// next handler, or nil for any other request (pass it through). A body that cannot
// be read is answered here: ok is then false and the caller stops.
func peekSOAP(w http.ResponseWriter, r *http.Request) (body []byte, ok bool) {
	if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
		return nil, true
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		http.Error(w, "vcsim: reading request: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	return body, true
}

// createSnapshotCall is the CreateSnapshot_Task request in body, or nil.
func createSnapshotCall(body []byte) *types.CreateSnapshot_Task {
	if !bytes.Contains(body, []byte("CreateSnapshot_Task")) {
		return nil
	}
	method, err := decodeRequest(body)
	if err != nil {
		return nil
	}
	req, _ := method.Body.(*types.CreateSnapshot_Task)
	return req
}
