package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weftnet/weft/control/flannel"
)

// Condition reason and message for NetworkUnavailable=False, in flannel's
// style ("FlannelIsUp").
const (
	ConditionReason  = "WeftIsUp"
	ConditionMessage = "Weft is running on this node"
)

// PublishPatch is the strategic-merge patch of nodes/status that publishes
// attrs as this node's lease annotations (byte-for-byte what flanneld
// writes) and sets NetworkUnavailable=False. Conditions merge by type, so
// the kubelet's other conditions are untouched.
func (a Annotations) PublishPatch(attrs flannel.LeaseAttrs, now time.Time) ([]byte, error) {
	switch {
	case attrs.PublicIP.IsValid() && !attrs.PublicIP.Is4():
		return nil, fmt.Errorf("publish lease: %w: %v is not IPv4", flannel.ErrPublicIP, attrs.PublicIP)
	case attrs.PublicIPv6.IsValid() && (!attrs.PublicIPv6.Is6() || attrs.PublicIPv6.Is4In6()):
		return nil, fmt.Errorf("publish lease: %w: %v is not IPv6", flannel.ErrPublicIP, attrs.PublicIPv6)
	case !attrs.PublicIP.IsValid() && !attrs.PublicIPv6.IsValid():
		return nil, fmt.Errorf("publish lease: %w: neither PublicIP nor PublicIPv6", flannel.ErrPublicIP)
	}
	t := metav1.NewTime(now)
	patch := map[string]any{
		"metadata": map[string]any{"annotations": a.annotationsFor(attrs)},
		"status": map[string]any{"conditions": []corev1.NodeCondition{{
			Type:               corev1.NodeNetworkUnavailable,
			Status:             corev1.ConditionFalse,
			Reason:             ConditionReason,
			Message:            ConditionMessage,
			LastTransitionTime: t,
			LastHeartbeatTime:  t,
		}}},
	}
	return json.Marshal(patch)
}

// annotationsFor is a lease as flanneld's annotations: each family's pair
// (backend-data and public-ip; backend-v6-data and public-ipv6) only when
// the lease has that family's underlay address, as flanneld writes only
// the halves its backend filled.
func (a Annotations) annotationsFor(attrs flannel.LeaseAttrs) map[string]string {
	m := map[string]string{
		a.BackendType: attrs.BackendType,
		a.KubeManaged: "true",
	}
	if attrs.PublicIP.IsValid() {
		m[a.BackendData], m[a.PublicIP] = string(attrs.BackendData), attrs.PublicIP.String()
	}
	if attrs.PublicIPv6.IsValid() {
		m[a.BackendV6Data], m[a.PublicIPv6] = string(attrs.BackendV6Data), attrs.PublicIPv6.String()
	}
	return m
}

// Publish writes this node's lease annotations and NetworkUnavailable=False
// in one PATCH of nodes/status. Call it once the data plane is up: from then
// on peers send this node traffic.
func (m *Manager) Publish(ctx context.Context, attrs flannel.LeaseAttrs) error {
	patch, err := m.ann.PublishPatch(attrs, time.Now())
	if err != nil {
		return err
	}
	err = m.retry(ctx, "publish the lease", func() error {
		if err := m.client.patchNodeStatus(ctx, m.nodeName, types.StrategicMergePatchType, patch,
			metav1.PatchOptions{FieldManager: "weftd"}); err != nil {
			return apiError("patch", "nodes/status", err)
		}
		return nil
	})
	if err == nil {
		m.published.Store(&attrs)
	}
	return err
}
