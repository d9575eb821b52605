"""The emulated sail.Tensor / Handle keep SAIL's semantics: fp16 as uint16 views, element offsets, checks."""

import numpy as np
import pytest
import sophon.sail as sail


@pytest.fixture
def handle():
    return sail.Handle(0)


def test_handle_rejects_a_device_that_does_not_exist(monkeypatch):
    monkeypatch.setenv("SOPHON_SIM_DEVICES", "2")
    assert sail.Handle(1).get_device_id() == 1
    with pytest.raises(RuntimeError, match="no device 2"):
        sail.Handle(2)


def test_fp16_goes_in_as_a_uint16_view_and_comes_out_as_float16(handle):
    tensor = sail.Tensor(handle, [2, 3], sail.Dtype.BM_FLOAT16, False, True)
    values = np.arange(6, dtype=np.float16).reshape(2, 3) / 4
    with pytest.raises(RuntimeError, match="view"):
        tensor.update_data(values)
    tensor.update_data(values.view(np.uint16))
    out = tensor.asnumpy()
    assert out.dtype == np.float16 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, values)


def test_update_data_checks_dtype_and_size_and_keeps_the_shape(handle):
    tensor = sail.Tensor(handle, [1, 4], sail.Dtype.BM_INT32, False, True)
    with pytest.raises(RuntimeError, match="BM_INT32"):
        tensor.update_data(np.zeros(4, dtype=np.float32))
    with pytest.raises(RuntimeError, match="do not fit"):
        tensor.update_data(np.zeros(5, dtype=np.int32))
    tensor.update_data(np.array([7, 8], dtype=np.int32))  # a prefix is allowed
    assert tensor.shape() == [1, 4]
    assert tensor.asnumpy().tolist() == [[7, 8, 0, 0]]


def test_sync_d2d_copies_elements_at_element_offsets(handle):
    src = sail.Tensor(handle, [2, 4], sail.Dtype.BM_FLOAT32, False, True)
    dst = sail.Tensor(handle, [3, 4], sail.Dtype.BM_FLOAT32, False, True)
    src.update_data(np.arange(8, dtype=np.float32))
    dst.sync_d2d(src, 4, 6, 3)
    assert dst.asnumpy().reshape(-1).tolist() == [0, 0, 0, 0, 0, 0, 4, 5, 6, 0, 0, 0]


@pytest.mark.parametrize(
    ("offset_src", "offset_dst", "length", "message"),
    [(6, 0, 3, "out of bounds"), (0, 11, 2, "out of bounds"), (-1, 0, 1, "negative")],
)
def test_sync_d2d_bounds_are_checked(handle, offset_src, offset_dst, length, message):
    src = sail.Tensor(handle, [8], sail.Dtype.BM_FLOAT32, False, True)
    dst = sail.Tensor(handle, [12], sail.Dtype.BM_FLOAT32, False, True)
    with pytest.raises(RuntimeError, match=message):
        dst.sync_d2d(src, offset_src, offset_dst, length)


def test_sync_d2d_refuses_mixed_dtypes(handle):
    src = sail.Tensor(handle, [4], sail.Dtype.BM_FLOAT16, False, True)
    dst = sail.Tensor(handle, [4], sail.Dtype.BM_FLOAT32, False, True)
    with pytest.raises(RuntimeError, match="dtype"):
        dst.sync_d2d(src, 0, 0, 4)


def test_reshape_keeps_the_element_count(handle):
    tensor = sail.Tensor(handle, [1, 1, 8], sail.Dtype.BM_FLOAT16, False, True)
    tensor.reshape([1, 8])
    assert tensor.shape() == [1, 8]
    with pytest.raises(RuntimeError, match="elements"):
        tensor.reshape([1, 9])


def test_memory_set_fills_in_the_tensor_dtype(handle):
    tensor = sail.Tensor(handle, [3], sail.Dtype.BM_FLOAT16, False, True)
    tensor.memory_set(1.5)
    assert tensor.asnumpy().tolist() == [1.5, 1.5, 1.5]
    tensor.zeros()
    assert not tensor.asnumpy().any()


def test_tensor_from_a_numpy_array(handle):
    tensor = sail.Tensor(handle, np.array([[1, 2, 3]], dtype=np.int32))
    assert tensor.dtype() == sail.Dtype.BM_INT32 and tensor.shape() == [1, 3]
    assert tensor.asnumpy().tolist() == [[1, 2, 3]]
