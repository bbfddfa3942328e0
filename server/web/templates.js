// Built-in prompt templates: the seed's everyday writing and coding jobs. Each has named fields; the body
// refers to them as {{key}}. Names, labels and bodies come in English and Chinese (the interface language
// picks one). User templates (made in the page or imported) are plain strings and use the same {{field}}
// syntax, their fields being the placeholders found in the body.
"use strict";

window.QUIRE_BUILTIN_TEMPLATES = [
  {
    id: "wechat-article",
    icon: "article",
    name: { en: "WeChat public-account article", zh: "微信公众号文章" },
    description: {
      en: "A ready-to-publish article with title, hook, sections and a call to action.",
      zh: "可直接发布的公众号推文：标题、开头、分段小标题与结尾引导。",
    },
    fields: [
      { key: "topic", label: { en: "Topic", zh: "主题" }, placeholder: { en: "e.g. Running AI models on an office PC", zh: "例如：在办公电脑上本地运行大模型" } },
      { key: "audience", label: { en: "Readers", zh: "目标读者" }, placeholder: { en: "e.g. small-business owners", zh: "例如：中小企业老板" } },
      { key: "tone", label: { en: "Tone", zh: "语气风格" }, placeholder: { en: "e.g. friendly, practical", zh: "例如：亲切、实用" } },
      { key: "length", label: { en: "Length (characters)", zh: "字数" }, placeholder: { en: "e.g. 1500", zh: "例如：1500" } },
      { key: "points", label: { en: "Key points (optional)", zh: "要点（可选）" }, multiline: true },
    ],
    body: {
      en:
        "Write a WeChat public-account article about {{topic}} for {{audience}}, in a {{tone}} tone, about {{length}} characters long.\n" +
        "Give it a catchy title, an opening that hooks the reader, 3–5 sections with subheadings, and a closing call to action.\n" +
        "Points to cover:\n{{points}}",
      zh:
        "请写一篇微信公众号文章，主题是「{{topic}}」，目标读者是{{audience}}，语气{{tone}}，字数约{{length}}字。\n" +
        "要求：一个吸引人的标题，开头能抓住读者，正文分 3–5 个带小标题的部分，结尾有互动引导。\n" +
        "需要涵盖的要点：\n{{points}}",
    },
  },
  {
    id: "api-docs",
    icon: "code",
    name: { en: "API documentation for a function", zh: "为函数编写 API 文档" },
    description: {
      en: "Paste a function; get a Markdown reference: summary, parameters, return value, errors, example.",
      zh: "粘贴一个函数，生成 Markdown 格式的接口文档：说明、参数、返回值、异常与示例。",
    },
    fields: [
      { key: "language", label: { en: "Language", zh: "编程语言" }, placeholder: { en: "e.g. Python", zh: "例如：Python" } },
      { key: "code", label: { en: "Function source", zh: "函数源码" }, multiline: true, code: true },
    ],
    body: {
      en:
        "Write API documentation in Markdown for the following {{language}} function: a one-line summary, a description, " +
        "a table of parameters (name, type, meaning), the return value, errors it can raise, and a short usage example.\n\n" +
        "```\n{{code}}\n```",
      zh:
        "请为下面这个 {{language}} 函数编写 Markdown 格式的 API 文档，包括：一句话概述、详细说明、参数表（名称、类型、含义）、" +
        "返回值、可能抛出的异常，以及一个简短的调用示例。\n\n```\n{{code}}\n```",
    },
  },
  {
    id: "python-script",
    icon: "terminal",
    name: { en: "Python script", zh: "Python 脚本" },
    description: {
      en: "A complete, commented script for a task, with how to run it.",
      zh: "为一个任务写完整、带注释的 Python 脚本，并说明如何运行。",
    },
    fields: [
      { key: "task", label: { en: "What it should do", zh: "脚本要完成的任务" }, multiline: true, placeholder: { en: "e.g. merge every .xlsx file in a folder into one sheet", zh: "例如：把一个文件夹里的所有 .xlsx 合并成一张表" } },
      { key: "input", label: { en: "Input", zh: "输入" }, placeholder: { en: "e.g. a folder path given on the command line", zh: "例如：命令行传入的文件夹路径" } },
      { key: "output", label: { en: "Output", zh: "输出" }, placeholder: { en: "e.g. merged.xlsx", zh: "例如：merged.xlsx" } },
      { key: "libraries", label: { en: "Allowed libraries", zh: "可用的库" }, placeholder: { en: "e.g. standard library + pandas", zh: "例如：标准库 + pandas" } },
    ],
    body: {
      en:
        "Write a complete Python 3 script that does the following:\n{{task}}\n\nInput: {{input}}\nOutput: {{output}}\n" +
        "Use only: {{libraries}}. Handle errors sensibly, add comments, and end with a short note on how to run it.",
      zh:
        "请写一个完整的 Python 3 脚本，完成以下任务：\n{{task}}\n\n输入：{{input}}\n输出：{{output}}\n" +
        "只使用：{{libraries}}。请合理处理异常，添加注释，最后简要说明运行方法。",
    },
  },
  {
    id: "product-description",
    icon: "tag",
    name: { en: "Product description", zh: "产品描述文案" },
    description: {
      en: "Marketing copy for a product page or e-commerce listing.",
      zh: "用于产品页或电商详情页的营销文案。",
    },
    fields: [
      { key: "product", label: { en: "Product", zh: "产品名称" } },
      { key: "features", label: { en: "Features and selling points", zh: "功能与卖点" }, multiline: true },
      { key: "audience", label: { en: "Target customers", zh: "目标客户" } },
      { key: "platform", label: { en: "Where it will appear", zh: "投放平台" }, placeholder: { en: "e.g. Taobao listing, website, brochure", zh: "例如：淘宝详情页、官网、宣传册" } },
    ],
    body: {
      en:
        "Write a product description for {{product}}, aimed at {{audience}}, for {{platform}}.\n" +
        "Features and selling points:\n{{features}}\n\n" +
        "Give a headline, a short persuasive paragraph, a bullet list of benefits (not just features), and a one-line call to action.",
      zh:
        "请为「{{product}}」写一段产品描述文案，面向{{audience}}，用于{{platform}}。\n功能与卖点：\n{{features}}\n\n" +
        "要求：一个醒目的标题、一段有说服力的介绍、一组突出用户利益（而不只是功能）的要点，以及一句行动号召。",
    },
  },
  {
    id: "email-draft",
    icon: "mail",
    name: { en: "Email draft", zh: "邮件草稿" },
    description: {
      en: "A clear, polite email from a few notes.",
      zh: "根据几条要点写一封清楚、得体的邮件。",
    },
    fields: [
      { key: "recipient", label: { en: "To (who they are)", zh: "收件人（身份）" }, placeholder: { en: "e.g. a supplier's sales manager", zh: "例如：供应商的销售经理" } },
      { key: "purpose", label: { en: "Purpose", zh: "目的" }, placeholder: { en: "e.g. ask to move the delivery date", zh: "例如：请求调整交货日期" } },
      { key: "points", label: { en: "Points to include", zh: "需要包含的要点" }, multiline: true },
      { key: "tone", label: { en: "Tone", zh: "语气" }, placeholder: { en: "e.g. formal", zh: "例如：正式" } },
    ],
    body: {
      en:
        "Draft an email to {{recipient}}. Purpose: {{purpose}}. Tone: {{tone}}.\nInclude these points:\n{{points}}\n\n" +
        "Give a subject line, then the email, short and clear.",
      zh:
        "请帮我起草一封写给{{recipient}}的邮件。目的：{{purpose}}。语气：{{tone}}。\n需要包含以下要点：\n{{points}}\n\n" +
        "请先给出邮件主题，再写正文，简洁明了。",
    },
  },
  {
    id: "report-summary",
    icon: "report",
    name: { en: "Report summary", zh: "报告摘要" },
    description: {
      en: "Summarise a long report into key findings, figures and actions.",
      zh: "把一份长报告提炼为关键结论、数据和行动项。",
    },
    fields: [
      { key: "length", label: { en: "Summary length", zh: "摘要长度" }, placeholder: { en: "e.g. 200 words", zh: "例如：300 字" } },
      { key: "readers", label: { en: "For whom", zh: "给谁看" }, placeholder: { en: "e.g. management", zh: "例如：公司管理层" } },
      { key: "report", label: { en: "Report text", zh: "报告原文" }, multiline: true },
    ],
    body: {
      en:
        "Summarise the report below for {{readers}} in about {{length}}: start with a one-sentence conclusion, then the key " +
        "findings as bullets (keep important numbers), then recommended actions.\n\n---\n{{report}}\n---",
      zh:
        "请为{{readers}}总结下面这份报告，篇幅约{{length}}：先用一句话给出核心结论，再用要点列出关键发现（保留重要数据），" +
        "最后给出建议的行动项。\n\n---\n{{report}}\n---",
    },
  },
  {
    id: "faq-from-notes",
    icon: "help",
    name: { en: "FAQ from notes", zh: "根据笔记生成 FAQ" },
    description: {
      en: "Turn meeting notes or product notes into a customer-facing FAQ.",
      zh: "把会议纪要或产品笔记整理成面向客户的常见问题解答。",
    },
    fields: [
      { key: "subject", label: { en: "Subject", zh: "主题" }, placeholder: { en: "e.g. our new membership plan", zh: "例如：新的会员方案" } },
      { key: "count", label: { en: "Number of questions", zh: "问题数量" }, placeholder: { en: "e.g. 8", zh: "例如：8" } },
      { key: "notes", label: { en: "Notes", zh: "笔记内容" }, multiline: true },
    ],
    body: {
      en:
        "From the notes below, write an FAQ about {{subject}} with {{count}} questions customers are likely to ask. " +
        "Format each as a bold question followed by a short, accurate answer. Do not invent facts that are not in the notes.\n\n" +
        "Notes:\n{{notes}}",
      zh:
        "请根据下面的笔记，整理一份关于「{{subject}}」的常见问题解答（FAQ），共 {{count}} 个客户最可能问的问题。" +
        "每条用加粗的问题加简短准确的回答，不要编造笔记中没有的信息。\n\n笔记：\n{{notes}}",
    },
  },
];
