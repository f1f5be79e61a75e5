# Container images, model packaging and SageMaker deployment; included by the top Makefile.
# `make help` lists the targets, `make aws-vars` the variables and their defaults; override
# any of them on the command line (make deploy ROLE_ARN=arn:aws:iam::...). Every recipe
# line is printed before it runs. The order of a first deployment:
#   make model-tar image-cpu ecr-push deploy autoscale endpoint-latency ... teardown

AWS_MK   := $(lastword $(MAKEFILE_LIST))
VERSION  := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/kogpt2_serving/__init__.py)
KOGPT2   := $(VENV)/bin/kogpt2-serving

## AWS region of ECR, S3, SageMaker and the base image registry
AWS_REGION ?= ap-northeast-2
## AWS account (default: asked from `aws sts get-caller-identity`, once)
AWS_ACCOUNT ?= $(eval AWS_ACCOUNT := $(shell aws sts get-caller-identity --query Account --output text 2>/dev/null))$(AWS_ACCOUNT)
## MXNet base image version: 1.6.0 (Python 3.6), 1.8.0 (3.7) or 1.9.0 (3.8)
MXNET_VERSION ?= 1.6.0
## registry of AWS's Deep Learning Containers (the base images)
BASE_REGISTRY ?= 763104351884.dkr.ecr.$(AWS_REGION).amazonaws.com
## image built and deployed by push/run/deploy: cpu or gpu
DEVICE ?= cpu
## local image name (tags are VERSION-cpu and VERSION-gpu)
IMAGE_NAME ?= kogpt2-serving
## ECR repository pushed to (created if missing)
ECR_REPO ?= kogpt2-serving
## model directory for run-cpu/run-gpu and model-tar
MODEL_DIR ?= model
## archive written by model-tar and uploaded by deploy
MODEL_TAR ?= build/model.tar.gz
## S3 bucket for model.tar.gz (the SageMaker SDK's default bucket name)
BUCKET ?= sagemaker-$(AWS_REGION)-$(AWS_ACCOUNT)
## S3 key prefix for model.tar.gz
S3_PREFIX ?= kogpt2-serving
## IAM role SageMaker assumes (required by deploy)
ROLE_ARN ?=
## name of the SageMaker model, endpoint config and endpoint
ENDPOINT ?= kogpt2-serving
## SageMaker instance type (GPU: e.g. ml.g4dn.xlarge with DEVICE=gpu)
INSTANCE_TYPE ?= ml.c5.xlarge
## instances behind the endpoint at start
INSTANCE_COUNT ?= 1
## MMS workers per instance; empty: the server's default (32 light workers in front of the engine,
## or 1 with the model in each worker)
WORKERS ?=
## autoscaling: fewest instances
MIN_INSTANCES ?= 1
## autoscaling: most instances
MAX_INSTANCES ?= 4
## autoscaling: invocations per instance per minute to hold
TARGET_INVOCATIONS ?= 60
## autoscaling: seconds between scale-in steps
SCALE_IN_COOLDOWN ?= 300
## autoscaling: seconds between scale-out steps
SCALE_OUT_COOLDOWN ?= 60
## host port for run-cpu/run-gpu
PORT ?= 8080
## endpoint-latency: requests to send (the first is an untimed warm-up)
LATENCY_CALLS ?= 20
## endpoint-latency: the prompt
PROMPT ?= 아기 공룡 둘리는 희동이와
## endpoint-latency: time this URL (e.g. http://127.0.0.1:8080 for run-cpu) instead of ENDPOINT
LATENCY_URL ?=
## batch-transform: s3:// prefix of the .jsonl input files
BATCH_INPUT ?=
## batch-transform: s3:// prefix for the results
BATCH_OUTPUT ?=
## teardown extras, e.g. --delete-model-data --delete-image
TEARDOWN_FLAGS ?=
## set to 1 to print the AWS API calls of deploy/autoscale/teardown/batch-transform instead of sending them
DRY_RUN ?=

BASE_TAG_cpu_1.6.0 := 1.6.0-cpu-py36-ubuntu16.04
BASE_TAG_gpu_1.6.0 := 1.6.0-gpu-py36-cu101-ubuntu16.04
BASE_TAG_cpu_1.8.0 := 1.8.0-cpu-py37-ubuntu16.04
BASE_TAG_gpu_1.8.0 := 1.8.0-gpu-py37-cu110-ubuntu16.04
BASE_TAG_cpu_1.9.0 := 1.9.0-cpu-py38-ubuntu20.04-sagemaker
BASE_TAG_gpu_1.9.0 := 1.9.0-gpu-py38-cu112-ubuntu20.04-sagemaker

ECR_REGISTRY = $(AWS_ACCOUNT).dkr.ecr.$(AWS_REGION).amazonaws.com
IMAGE_URI    = $(ECR_REGISTRY)/$(ECR_REPO):$(VERSION)-$(DEVICE)
AWS_ARGS     = --region $(AWS_REGION) $(if $(DRY_RUN),--dry-run)
need-account = $(if $(strip $(AWS_ACCOUNT)),,$(error AWS_ACCOUNT is unknown: configure AWS credentials (aws configure) or pass AWS_ACCOUNT=123456789012))
base-tag     = $(or $(BASE_TAG_$(1)_$(MXNET_VERSION)),$(error MXNET_VERSION=$(MXNET_VERSION) has no base image: use 1.6.0, 1.8.0 or 1.9.0))

.PHONY: aws-vars base-login image-cpu image-gpu run-cpu run-gpu ecr-push model-tar deploy autoscale \
        endpoint-latency batch-transform teardown

aws-vars:  ## list the container and AWS variables with their defaults
	@awk '/^## /{doc=substr($$0,4); next} /^[A-Z_]+ \?=/{v=$$0; sub(/ \?= ?/, "\t", v); split(v, p, "\t"); \
	  if (p[2] == "") p[2] = "(empty)"; if (p[2] ~ /eval/) p[2] = "(aws sts)"; \
	  printf "  %-19s %-40s %s\n", p[1], p[2], doc; doc = ""}' $(AWS_MK)

base-login:  ## log docker in to the Deep Learning Containers registry (to pull the MXNet base)
	aws ecr get-login-password --region $(AWS_REGION) | docker login --username AWS --password-stdin $(BASE_REGISTRY)

image-cpu: wheel base-login  ## build the CPU image (MXNET_VERSION base) as IMAGE_NAME:VERSION-cpu
	docker build -f docker/Dockerfile.cpu --build-arg REGION=$(AWS_REGION) --build-arg REGISTRY=$(BASE_REGISTRY) \
	  --build-arg BASE_TAG=$(call base-tag,cpu) -t $(IMAGE_NAME):$(VERSION)-cpu .

image-gpu: wheel base-login  ## build the GPU image (MXNET_VERSION base) as IMAGE_NAME:VERSION-gpu
	docker build -f docker/Dockerfile.gpu --build-arg REGION=$(AWS_REGION) --build-arg REGISTRY=$(BASE_REGISTRY) \
	  --build-arg BASE_TAG=$(call base-tag,gpu) -t $(IMAGE_NAME):$(VERSION)-gpu .

run-cpu:  ## serve MODEL_DIR with the CPU image on localhost:PORT, as SageMaker runs it
	docker run --rm -p $(PORT):8080 -v $(abspath $(MODEL_DIR)):/opt/ml/model:ro \
	  $(if $(WORKERS),-e SAGEMAKER_MODEL_SERVER_WORKERS=$(WORKERS)) $(IMAGE_NAME):$(VERSION)-cpu serve

run-gpu:  ## serve MODEL_DIR with the GPU image (all GPUs) on localhost:PORT
	docker run --rm --gpus all -p $(PORT):8080 -v $(abspath $(MODEL_DIR)):/opt/ml/model:ro \
	  $(if $(WORKERS),-e SAGEMAKER_MODEL_SERVER_WORKERS=$(WORKERS)) $(IMAGE_NAME):$(VERSION)-gpu serve

ecr-push:  ## create ECR_REPO if missing, log in, tag and push the DEVICE image
	$(need-account)
	aws ecr describe-repositories --region $(AWS_REGION) --repository-names $(ECR_REPO) >/dev/null 2>&1 || \
	  aws ecr create-repository --region $(AWS_REGION) --repository-name $(ECR_REPO)
	aws ecr get-login-password --region $(AWS_REGION) | docker login --username AWS --password-stdin $(ECR_REGISTRY)
	docker tag $(IMAGE_NAME):$(VERSION)-$(DEVICE) $(IMAGE_URI)
	docker push $(IMAGE_URI)
	@echo "pushed $(IMAGE_URI)"

model-tar: $(STAMP)  ## package MODEL_DIR into MODEL_TAR (loads it first to validate)
	@mkdir -p $(dir $(MODEL_TAR))
	$(KOGPT2) package --model-dir $(MODEL_DIR) -o $(MODEL_TAR)

deploy: $(STAMP)  ## upload MODEL_TAR, create model + endpoint config + endpoint ENDPOINT, wait for InService
	$(need-account)
	$(KOGPT2) deploy --name $(ENDPOINT) --image $(IMAGE_URI) $(if $(ROLE_ARN),--role $(ROLE_ARN)) \
	  --model-tar $(MODEL_TAR) --bucket $(BUCKET) --prefix $(S3_PREFIX) --instance-type $(INSTANCE_TYPE) \
	  --instance-count $(INSTANCE_COUNT) $(if $(WORKERS),--workers $(WORKERS)) $(AWS_ARGS)

autoscale: $(STAMP)  ## target tracking on invocations per instance for ENDPOINT
	$(KOGPT2) autoscale --name $(ENDPOINT) --min-instances $(MIN_INSTANCES) --max-instances $(MAX_INSTANCES) \
	  --target $(TARGET_INVOCATIONS) --scale-in-cooldown $(SCALE_IN_COOLDOWN) \
	  --scale-out-cooldown $(SCALE_OUT_COOLDOWN) $(AWS_ARGS)

endpoint-latency: $(STAMP)  ## time LATENCY_CALLS requests against ENDPOINT (or LATENCY_URL)
	$(KOGPT2) latency $(if $(LATENCY_URL),--url $(LATENCY_URL),--endpoint $(ENDPOINT) --region $(AWS_REGION)) \
	  --calls $(LATENCY_CALLS) --prompt "$(PROMPT)"

batch-transform: $(STAMP)  ## run a Batch Transform job of model ENDPOINT over BATCH_INPUT into BATCH_OUTPUT
	$(KOGPT2) batch-transform --model-name $(ENDPOINT) --input $(BATCH_INPUT) --output $(BATCH_OUTPUT) \
	  --instance-type $(INSTANCE_TYPE) --instance-count $(INSTANCE_COUNT) $(AWS_ARGS)

teardown: $(STAMP)  ## delete ENDPOINT's autoscaling, endpoint, config and model (TEARDOWN_FLAGS for S3/ECR)
	$(KOGPT2) teardown --name $(ENDPOINT) $(TEARDOWN_FLAGS) $(AWS_ARGS)
