// Command go-webhook is the baseline of the webhook benchmark: an equivalent proxy rewrite
// served by controller-runtime's webhook server (PatchResponseFromRaw computes the JSON patch
// by diffing the original and the mutated pod).
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"net/http"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

const (
	elect      = "multicluster.admiralty.io/elect"
	manifest   = "multicluster.admiralty.io/sourcepod-manifest"
	proxyLabel = "multicluster.admiralty.io/proxy"
	finalizer  = "multicluster.admiralty.io/delegate-cleanup"
	tag        = "multicluster.admiralty.io/sourcepod-manifest/v1\x00"
)

type proxier struct {
	decoder admission.Decoder
	key     []byte
	image   string
}

func (p *proxier) Handle(_ context.Context, req admission.Request) admission.Response {
	pod := &corev1.Pod{}
	if err := p.decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if _, ok := pod.Annotations[elect]; !ok {
		return admission.Allowed("not elected")
	}
	if _, ok := pod.Annotations[manifest]; ok {
		return admission.Allowed("already a proxy")
	}
	saved, err := json.Marshal(map[string]interface{}{
		"metadata": map[string]interface{}{"name": pod.Name, "generateName": pod.GenerateName, "namespace": req.Namespace, "labels": pod.Labels, "annotations": pod.Annotations},
		"spec":     pod.Spec,
	})
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	mac := hmac.New(sha256.New, p.key)
	mac.Write([]byte(tag))
	mac.Write([]byte(req.Namespace))
	mac.Write([]byte{0})
	mac.Write(saved)

	proxy := pod.DeepCopy()
	proxy.Annotations[manifest] = "v1." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)) + "." + string(saved)
	if proxy.Labels == nil {
		proxy.Labels = map[string]string{}
	}
	proxy.Labels[proxyLabel] = "true"
	proxy.Finalizers = append(proxy.Finalizers, finalizer)
	proxy.Spec = p.proxySpec(pod.Spec)
	marshaled, err := json.Marshal(proxy)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.PatchResponseFromRaw(req.Object.Raw, marshaled)
}

func (p *proxier) proxySpec(spec corev1.PodSpec) corev1.PodSpec {
	no, yes, user := false, true, int64(65532)
	out := corev1.PodSpec{
		RestartPolicy: spec.RestartPolicy, TerminationGracePeriodSeconds: spec.TerminationGracePeriodSeconds,
		ActiveDeadlineSeconds: spec.ActiveDeadlineSeconds, ServiceAccountName: spec.ServiceAccountName,
		Tolerations: spec.Tolerations, PriorityClassName: spec.PriorityClassName, Priority: spec.Priority,
		PreemptionPolicy: spec.PreemptionPolicy, SchedulerName: spec.SchedulerName, ImagePullSecrets: spec.ImagePullSecrets,
		AutomountServiceAccountToken: &no,
		SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: &yes, RunAsUser: &user, RunAsGroup: &user,
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
		Volumes: []corev1.Volume{{Name: "proxy-waiter-podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
			Items: []corev1.DownwardAPIVolumeFile{{Path: "annotations", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations"}}}}}}},
	}
	for _, c := range spec.Containers {
		out.Containers = append(out.Containers, p.container(c, false))
	}
	for _, c := range spec.InitContainers {
		out.InitContainers = append(out.InitContainers, p.container(c, c.RestartPolicy == nil))
	}
	return out
}

func (p *proxier) container(c corev1.Container, init bool) corev1.Container {
	no, yes := false, true
	out := corev1.Container{
		Name: c.Name, Image: p.image, ImagePullPolicy: corev1.PullIfNotPresent, Command: []string{"/proxy-waiter"},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1m"), corev1.ResourceMemory: resource.MustParse("8Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
		},
		SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &no, Privileged: &no, ReadOnlyRootFilesystem: &yes,
			RunAsNonRoot: &yes, Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
		TerminationMessagePath: c.TerminationMessagePath, TerminationMessagePolicy: c.TerminationMessagePolicy, RestartPolicy: c.RestartPolicy,
	}
	if init {
		out.Args = []string{"init"}
		return out
	}
	out.Env = []corev1.EnvVar{{Name: "PROXY_WAITER_CONTAINER", Value: c.Name}, {Name: "PROXY_WAITER_ANNOTATIONS", Value: "/etc/proxy-waiter/annotations"}}
	out.VolumeMounts = []corev1.VolumeMount{{Name: "proxy-waiter-podinfo", MountPath: "/etc/proxy-waiter", ReadOnly: true}}
	return out
}

func main() {
	port := flag.Int("port", 9443, "HTTPS port")
	certDir := flag.String("cert-dir", "", "directory with tls.crt and tls.key")
	keyFile := flag.String("manifest-key-file", "", "HMAC key file")
	flag.Parse()
	key, err := os.ReadFile(*keyFile)
	if err != nil {
		panic(err)
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	_ = metav1.Now
	server := webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: *port, CertDir: *certDir})
	server.Register("/mutate", &webhook.Admission{Handler: &proxier{decoder: admission.NewDecoder(scheme), key: key, image: "proxy-waiter:bench"}})
	if err := server.Start(ctrl.SetupSignalHandler()); err != nil {
		panic(err)
	}
}
